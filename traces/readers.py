"""Streaming readers for public request-trace formats.

Each reader is a generator of :class:`Request` in file order, so memory does not grow with the
length of the trace. Arrival times are seconds from the first row. A malformed row raises
:class:`TraceError` naming the file, the line and the field.

Formats:
- ``mooncake``: JSONL with ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``
  (one chain id per 512-token block; count = ceil(input_length / 512)). Mooncake, FAST'25.
- ``azure``: CSV with ``TIMESTAMP`` (UTC datetime), ``ContextTokens``, ``GeneratedTokens``
  (Azure LLM inference traces 2023 and 2024). No prefix information.
- ``burstgpt``: CSV with ``Timestamp`` (s), ``Request tokens``, ``Response tokens``; rows with zero
  response tokens are failed requests in BurstGPT and are skipped.
- ``kvsim``: JSONL, kvsim's own superset: ``arrival_s``, ``prompt_tokens``, ``output_tokens`` and
  optional ``blocks``, ``unit_tokens``, ``output_blocks``, ``session``, ``job``, ``turn``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from .request import Request, TraceError

MOONCAKE_UNIT_TOKENS = 512


def _int_field(row: dict, key: str, where: str, minimum: int = 0) -> int:
    if key not in row:
        raise TraceError(f"{where}: missing field '{key}'")
    value = row[key]
    try:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or str(value).strip() in ("",) or number < minimum:
        raise TraceError(f"{where}: field '{key}' is {value!r}; expected an integer >= {minimum}")
    return number


def _float_field(row: dict, key: str, where: str) -> float:
    if key not in row:
        raise TraceError(f"{where}: missing field '{key}'")
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{where}: field '{key}' is {row[key]!r}; expected a number >= 0")
    return value


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TraceError(f"{where}: expected a JSON object per line")
            yield where, row


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(
                f"{path}:1: missing column {missing[0]!r}; the header has {reader.fieldnames}"
            )
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _ordered(
    rows: Iterator[tuple[str, float, Callable[[int, float], Request]]],
) -> Iterator[Request]:
    """Turn (where, absolute time, factory) rows into requests with times from the first row."""
    origin = None
    last = -math.inf
    for index, (where, t, make) in enumerate(rows):
        if origin is None:
            origin = t
        if t < last:
            raise TraceError(f"{where}: timestamp goes backwards ({t - origin:.6f} s < previous)")
        last = t
        yield make(index, t - origin)


def read_mooncake(path: Path) -> Iterator[Request]:
    """Mooncake JSONL (timestamps in ms, 512-token hash_ids)."""

    def rows():
        for where, row in _json_rows(path):
            t_ms = _float_field(row, "timestamp", where)
            prompt = _int_field(row, "input_length", where, minimum=1)
            output = _int_field(row, "output_length", where, minimum=0)
            ids = row.get("hash_ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise TraceError(f"{where}: field 'hash_ids' must be a list of integers")
            expected = math.ceil(prompt / MOONCAKE_UNIT_TOKENS)
            if len(ids) != expected:
                raise TraceError(
                    f"{where}: field 'hash_ids' has {len(ids)} ids; "
                    f"input_length {prompt} needs ceil({prompt}/512) = {expected}"
                )
            blocks = tuple(ids)

            def make(i, t, prompt=prompt, output=output, blocks=blocks):
                return Request(i, t, prompt, max(1, output), blocks, MOONCAKE_UNIT_TOKENS)

            yield where, t_ms / 1000.0, make

    return _ordered(rows())


def _parse_datetime(value: str, where: str) -> float:
    text = value.strip()
    if "." in text:  # Azure writes 7 fractional digits; datetime takes at most 6.
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise TraceError(f"{where}: field 'TIMESTAMP' is {value!r}; expected a datetime") from None


def read_azure(path: Path) -> Iterator[Request]:
    """Azure LLM inference trace CSV (2023 or 2024)."""

    def rows():
        for where, row in _csv_rows(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")):
            t = _parse_datetime(row["TIMESTAMP"], where)
            prompt = _int_field(row, "ContextTokens", where, minimum=1)
            output = _int_field(row, "GeneratedTokens", where, minimum=0)

            def make(i, t, prompt=prompt, output=output):
                return Request(i, t, prompt, max(1, output))

            yield where, t, make

    return _ordered(rows())


def read_burstgpt(path: Path) -> Iterator[Request]:
    """BurstGPT CSV; failed requests (zero response tokens) are skipped."""

    def rows():
        for where, row in _csv_rows(path, ("Timestamp", "Request tokens", "Response tokens")):
            t = _float_field(row, "Timestamp", where)
            prompt = _int_field(row, "Request tokens", where, minimum=0)
            output = _int_field(row, "Response tokens", where, minimum=0)
            if output == 0 or prompt == 0:
                continue

            def make(i, t, prompt=prompt, output=output):
                return Request(i, t, prompt, output)

            yield where, t, make

    return _ordered(rows())


def _optional_ids(row: dict, key: str, where: str) -> tuple[int, ...]:
    ids = row.get(key, [])
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise TraceError(f"{where}: field '{key}' must be a list of integers")
    return tuple(ids)


def read_kvsim(path: Path) -> Iterator[Request]:
    """kvsim JSONL: arrival_s, prompt_tokens, output_tokens; optional blocks, unit_tokens,
    output_blocks, and sessions: session, turn, think_s, job.

    A session's turns are consecutive rows, turn 0 first. Only rows that start something (no
    session, or turn 0) carry ordered arrival times; a later turn arrives ``think_s`` after the
    previous one finishes (closed loop), so its ``arrival_s`` may be left out."""
    origin = None
    last = -math.inf
    session = None
    turn = 0
    for index, (where, row) in enumerate(_json_rows(path)):
        sess = row.get("session")
        if sess is not None and (isinstance(sess, bool) or not isinstance(sess, int) or sess < 0):
            raise TraceError(f"{where}: field 'session' is {sess!r}; expected an integer >= 0")
        follow = sess is not None and "turn" in row and _int_field(row, "turn", where) > 0
        if follow:
            t_turn = _int_field(row, "turn", where)
            if sess != session or t_turn != turn + 1:
                raise TraceError(
                    f"{where}: turn {t_turn} of session {sess!r} must follow turn {t_turn - 1} "
                    "of that session on the row before (a session's turns are consecutive rows)"
                )
            t = _float_field(row, "arrival_s", where) if "arrival_s" in row else None
        else:
            t = _float_field(row, "arrival_s", where)
            if origin is None:
                origin = t
            if t < last:
                raise TraceError(
                    f"{where}: timestamp goes backwards ({t - origin:.6f} s < previous)"
                )
            last = t
        session, turn = sess, (_int_field(row, "turn", where) if follow else 0)
        prompt = _int_field(row, "prompt_tokens", where, minimum=1)
        output = _int_field(row, "output_tokens", where, minimum=1)
        unit = _int_field(row, "unit_tokens", where, minimum=1) if "unit_tokens" in row else 512
        blocks = _optional_ids(row, "blocks", where)
        if blocks and len(blocks) != math.ceil(prompt / unit):
            raise TraceError(
                f"{where}: field 'blocks' has {len(blocks)} ids; prompt_tokens {prompt} "
                f"needs ceil({prompt}/{unit}) = {math.ceil(prompt / unit)}"
            )
        out_blocks = _optional_ids(row, "output_blocks", where)
        think = _float_field(row, "think_s", where) if "think_s" in row else 0.0
        arrival = (t - origin) if t is not None and origin is not None else 0.0
        yield Request(index, arrival, prompt, output, blocks, unit, out_blocks, sess,
                      row.get("job"), turn, think)  # fmt: skip


FORMATS: dict[str, Callable[[Path], Iterator[Request]]] = {
    "mooncake": read_mooncake,
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "kvsim": read_kvsim,
}


def read_trace(path: str | Path, fmt: str) -> Iterator[Request]:
    """Stream the requests of a trace file in one of :data:`FORMATS`."""
    path = Path(path)
    if fmt not in FORMATS:
        raise TraceError(f"{path}: unknown trace format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    return FORMATS[fmt](path)


def guess_format(path: str | Path) -> str:
    """The format a file most likely has, from its first line."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if first.lstrip().startswith("{"):
        return "mooncake" if "hash_ids" in first or "input_length" in first else "kvsim"
    if "ContextTokens" in first:
        return "azure"
    if "Request tokens" in first:
        return "burstgpt"
    raise TraceError(
        f"{path}:1: cannot tell the trace format; pass --format ({', '.join(FORMATS)})"
    )
