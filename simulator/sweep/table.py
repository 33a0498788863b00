"""A sweep's results table: one row per point, every input and output column.

Columns, in this order: ``point`` (the index), ``folder`` (relative to the sweep's folder), the
override columns, then the output columns (each point's ``summary.json`` flattened with ``.``:
``ttft_s.p99``, ``throughput.requests_per_s``). An override whose value is a mapping gives a
column with the mapping as one line of YAML (``{type: every, k: 256}``) and a column per sub-key
(``cache.checkpoint.type``, ``cache.checkpoint.k``); a list is one line of YAML. A summary's list
of records (``replicas``) is left out: each point's summary.json has it. Columns appear in
first-appearance order over the points, so the table depends only on the sweep and its results;
a value a point lacks is empty. An output column whose name is also an override column (the
summary repeats ``slo.ttft_s``) is named ``summary.<name>``.

The same table is written as CSV (floats as Python's shortest round-trip text) and as Parquet
(a column of integers is int64, of numbers float64, of true/false bool, of no values null,
anything else text).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..pages import grid_csv
from .spec import Point, flow_yaml

FIXED = ("point", "folder")


def _flatten(prefix: str, value: Any, out: dict[str, Any], mapping_text: bool) -> None:
    if isinstance(value, dict):
        if mapping_text and prefix:
            out[prefix] = flow_yaml(value)
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out, mapping_text)
    elif isinstance(value, list):
        out[prefix] = flow_yaml(value)
    else:
        out[prefix] = value


def input_columns(point: Point) -> dict[str, Any]:
    """A point's override columns: each path, and each sub-key of a mapping value."""
    out: dict[str, Any] = {}
    for path, value in point.values:
        _flatten(path, value, out, mapping_text=True)
    return out


def output_columns(summary: dict) -> dict[str, Any]:
    """A summary.json flattened with '.' (``{"ttft_s": {"p99": x}}`` → ``ttft_s.p99``), without
    its lists of records (``replicas``: one entry per replica, read in the point's own
    summary.json)."""
    out: dict[str, Any] = {}
    kept = {k: v for k, v in summary.items() if not _records_list(v)}
    _flatten("", kept, out, mapping_text=False)
    return out


def _records_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


@dataclass
class Table:
    """The results table."""

    columns: list[str]
    """Every column, in order."""
    rows: list[dict[str, Any]]
    """One dict per point, in point order; a missing value is absent."""
    inputs: list[str]
    """The override columns (paths and mapping sub-keys), in order."""

    def leaves(self) -> list[str]:
        """Override columns that no other column refines (``cache.checkpoint.k``, not
        ``cache.checkpoint`` when both exist)."""
        return [c for c in self.inputs if not any(o.startswith(c + ".") for o in self.inputs)]

    def varying(self) -> list[str]:
        """Override leaves whose value differs between points."""
        return [c for c in self.leaves() if len({cell_text(r.get(c)) for r in self.rows}) > 1]


def build_table(points: list[Point], summaries: list[dict]) -> Table:
    """The table of the points (in point order) and their summaries."""
    inputs = [input_columns(p) for p in points]
    outputs = [output_columns(s) for s in summaries]
    in_names = list(dict.fromkeys(k for row in inputs for k in row))
    taken = set(in_names) | set(FIXED)
    rename = {k: (f"summary.{k}" if k in taken else k) for row in outputs for k in row}
    rows = []
    for p, i, o in zip(points, inputs, outputs, strict=True):
        row: dict[str, Any] = {"point": p.index, "folder": p.folder, **i}
        row.update((rename[k], v) for k, v in o.items())
        rows.append(row)
    out_names = list(dict.fromkeys(rename[k] for row in outputs for k in row))
    return Table([*FIXED, *in_names, *out_names], rows, in_names)


KEY_OUTPUTS = ("ttft_s.p99", "tpot_s.p99", "throughput.requests_per_s", "slo.attainment")
"""The outputs the terminal shows per point (the results table has them all)."""
MAX_SHOWN_ROWS = 40


def terminal_table(table: Table, marks: dict[int, str]) -> str:
    """An aligned text table of the points: the override columns that vary, the key outputs,
    and ``marks[index]`` (ran, reused); at most :data:`MAX_SHOWN_ROWS` rows."""
    rows = table.rows
    shown = table.varying() or table.leaves()
    outputs = [c for c in KEY_OUTPUTS if c in table.columns]
    head = ["point", *shown, *outputs, ""]
    body = []
    for r in rows[:MAX_SHOWN_ROWS]:
        cells = [str(r["point"]), *(cell_text(r.get(c)) for c in shown)]
        cells += [_short(r.get(c)) for c in outputs]
        body.append([*cells, marks.get(r["point"], "")])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *body]]  # fmt: skip
    if len(rows) > MAX_SHOWN_ROWS:
        lines.append(f"… {len(rows) - MAX_SHOWN_ROWS} more points in results.csv")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return cell_text(v)


def cell_text(value: Any) -> str:
    """How the CSV writes a value: empty for none, true/false, floats as Python's repr."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_text(columns: list[str], rows: list[dict]) -> str:
    """The table as CSV text (``\\n`` line ends; a missing value is an empty cell)."""
    return grid_csv(columns, [[cell_text(row.get(c)) for c in columns] for row in rows])


def column_kind(values: list[Any]) -> str:
    """``bool``, ``int``, ``float`` or ``text``: what every present value of a column is
    (``none`` when no point has a value)."""
    present = [v for v in values if v is not None]
    if not present:
        return "none"
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if any(isinstance(v, bool) for v in present):
        return "text"
    if all(isinstance(v, int) for v in present):
        return "int"
    if all(isinstance(v, (int, float)) for v in present):
        return "float"
    return "text"


def parquet_bytes(columns: list[str], rows: list[dict]) -> bytes:
    """The table as a Parquet file's bytes (deterministic: no timestamps in the metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for c in columns:
        values = [row.get(c) for row in rows]
        kind = column_kind(values)
        if kind == "float":
            values = [None if v is None else float(v) for v in values]
        elif kind == "text":
            values = [None if v is None else cell_text(v) for v in values]
        types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "none": pa.null()}
        arrays.append(pa.array(values, type=types.get(kind, pa.string())))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), buf)
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it (never half-written)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's files are private; results are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_summary(folder: Path) -> dict:
    """A point's summary.json."""
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))
