"""The measurements CSV of a calibration run (DESIGN §7): one row per timed grid point.

Columns: ``op``, ``seconds`` (median time of one call), ``features`` (a JSON object: the op's
dimensions as ``ops.py`` names them), then the run record, the same on every row: ``model`` and
``tensor_parallel`` (whose shapes the grid holds), ``grid`` (``full`` or ``tiny``), ``timer``
(``cuda_events``: ``triton.testing.do_bench`` on a GPU; ``interpreter``: a wall clock around
Triton's CPU interpreter), ``device``, ``driver``, ``cuda``, ``torch``, ``triton`` and ``date``.

Reading checks every cell and refuses a bad file with one line naming the file, the line, the
column, the value and what is allowed. One file holds one run: every run-record column but
``date`` must agree on all rows (a re-measured op may be appended on a later day; the profile
records the span of dates).

Time-scale rule (for ``cuda_events`` rows; interpreter timings are meaningless by design): one call
of one kernel on a GPU takes between ``MIN_CALL_S`` (100 ns, below the resolution of CUDA events
and any launch) and ``MAX_CALL_S`` (1 s; the largest grid point, the LM-head GEMM of 16,384 tokens
of Llama-3.1-70B at TP1, is 3.4e13 FLOP: 0.23 s at the H20's datasheet 148 TFLOP/s bf16). Times
written in µs or ns as if in seconds land above it. Times written in ms can stay below 1 s; the
fitter catches them by their launch cost (``fit.MAX_LAUNCH_S``).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency.ops import OP_KINDS, STORAGE_FIELDS
from kvsim.simulator.latency.profile import NOT_MEASURABLE_ON_ONE_GPU

RUN_COLUMNS = ("model", "tensor_parallel", "grid", "timer", "device", "driver", "cuda", "torch",
               "triton", "date")  # fmt: skip
COLUMNS = ("op", "seconds", "features", *RUN_COLUMNS)
MEASURABLE_OPS = tuple(sorted(k for k in OP_KINDS if k not in NOT_MEASURABLE_ON_ONE_GPU))
GRIDS = ("full", "tiny")
TIMERS = ("cuda_events", "interpreter")
MIN_CALL_S = 1e-7
MAX_CALL_S = 1.0
# The only copy a single GPU measures (device to device); PCIe paths need a host side.
COPY_PATHS = ("d2d",)


@dataclass
class Measurement:
    """One timed grid point."""

    op: str
    """Op kind (``ops.OP_KINDS``)."""
    features: dict
    """The op's dimensions, by the names of its dataclass fields."""
    seconds: float
    """Median seconds of one call."""


def op_feature_kinds(op: str) -> dict[str, type]:
    """The features an op's measurement records, with their types (int or str).

    They are the op dataclass's fields but its storage fields (the measured dtype is the
    device's: bf16 on a GPU)."""
    default = OP_KINDS[op]()
    return {f.name: type(getattr(default, f.name)) for f in fields(default)
            if f.name not in STORAGE_FIELDS}  # fmt: skip


def _check_features(op: str, text: str, where: str) -> dict:
    here = f"{where}: field 'features'"
    try:
        features = json.loads(text)
    except json.JSONDecodeError as e:
        raise KvsimError(f"{here}: {text!r} is not valid JSON ({e.msg})") from None
    if not isinstance(features, dict):
        raise KvsimError(f"{here}: {text!r} is not a JSON object of the op's dimensions")
    kinds = op_feature_kinds(op)
    names = ", ".join(sorted(kinds))
    for name in features:
        if name not in kinds:
            raise KvsimError(f"{here}: {name!r} is not a feature of op {op!r}; allowed: {names}")
    for name in sorted(kinds):
        if name not in features:
            raise KvsimError(f"{here}: lacks {name!r}, which op {op!r} needs ({names})")
    out = {}
    for name, kind in kinds.items():
        v = features[name]
        if kind is str:
            if v not in COPY_PATHS:
                raise KvsimError(f"{here}: {name!r} is {v!r}; allowed: {', '.join(COPY_PATHS)}")
            out[name] = v
            continue
        # NOTE: bool is an int to Python; JSON true as a dimension is a mistake.
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (ok and v >= 0 and float(v).is_integer()):
            raise KvsimError(f"{here}: {name!r} is {v!r}; allowed: an integer ≥ 0")
        out[name] = int(v)
    return out


def _check_seconds(text: str, timer: str, where: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise KvsimError(f"{where}: field 'seconds' is {text!r}; allowed: a finite number > 0")
    if timer == "cuda_events" and not MIN_CALL_S <= seconds <= MAX_CALL_S:
        raise KvsimError(
            f"{where}: field 'seconds' is {text!r}; one kernel call timed with CUDA events takes "
            f"{MIN_CALL_S:g} to {MAX_CALL_S:g} s: are the times in µs or ms instead of s?"
        )
    return seconds


def _check_run(row: dict, where: str) -> dict:
    run = {k: row[k] for k in RUN_COLUMNS}
    tp = run["tensor_parallel"]
    if not (tp.isdigit() and int(tp) >= 1):
        raise KvsimError(f"{where}: field 'tensor_parallel' is {tp!r}; allowed: an integer ≥ 1")
    run["tensor_parallel"] = int(tp)
    for column, allowed in (("grid", GRIDS), ("timer", TIMERS)):
        if run[column] not in allowed:
            raise KvsimError(
                f"{where}: field {column!r} is {run[column]!r}; allowed: {', '.join(allowed)}"
            )
    if not run["model"]:
        raise KvsimError(f"{where}: field 'model' is ''; allowed: a model name")
    return run


def read_measurements(path: str | Path) -> tuple[list[Measurement], dict]:
    """Measurements and the run record (``RUN_COLUMNS``) from a calibration CSV.

    Raises:
        KvsimError: one line naming the file, the line, the column and the value, for any cell
            that is not allowed (see the module docstring), or rows of different runs.
    """
    path = Path(path)
    if not path.is_file():
        raise KvsimError(f"{path}: measurements file not found")
    rows: list[Measurement] = []
    run: dict = {}
    first_line = 0
    dates: list[str] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, restkey="\0extra")
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise KvsimError(f"{path}:1: missing column {missing[0]!r}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row.values() or "\0extra" in row:
                    n = sum(v is not None for k, v in row.items() if k != "\0extra")
                    n += len(row.get("\0extra", ()))
                    raise KvsimError(f"{where}: {n} fields; a row has {len(reader.fieldnames)}")
                this = _check_run(row, where)
                if row["op"] not in MEASURABLE_OPS:
                    allowed = ", ".join(MEASURABLE_OPS)
                    raise KvsimError(f"{where}: field 'op' is {row['op']!r}; allowed: {allowed}")
                seconds = _check_seconds(row["seconds"], this["timer"], where)
                features = _check_features(row["op"], row["features"], where)
                dates.append(this.pop("date"))
                if not run:
                    run, first_line = this, reader.line_num
                for column, value in this.items():
                    if value != run[column]:
                        raise KvsimError(
                            f"{where}: field {column!r} is {str(value)!r} but line {first_line} "
                            f"has {str(run[column])!r}; one file holds one calibration run (one "
                            "device, driver, CUDA, torch, triton, model, tensor_parallel, grid "
                            "and timer)"
                        )
                rows.append(Measurement(row["op"], features, seconds))
    except UnicodeDecodeError:
        raise KvsimError(f"{path}: not a UTF-8 CSV file") from None
    except csv.Error as e:
        raise KvsimError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise KvsimError(f"{path}: no measurements")
    lo, hi = min(dates), max(dates)
    return rows, {**run, "date": lo if lo == hi else f"{lo} to {hi}"}


def write_measurements(path: str | Path, rows: list[Measurement], run: dict) -> None:
    """Write measurements with the run record (``RUN_COLUMNS``) on every row."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.op, repr(r.seconds), json.dumps(r.features, sort_keys=True),
                        *(run[k] for k in RUN_COLUMNS)])  # fmt: skip
