"""Streaming readers for public request-trace formats.

Each reader is a generator of :class:`Request` in file order, so memory does not grow with the
length of the trace. Arrival times are seconds from the first row. A malformed row raises
:class:`TraceError` naming the file, the line and the field.

A trace is read as bytes, line by line: compressed files (gzip, bzip2, Zstandard; told by their
magic bytes, not their name) are decompressed on the way, each line is decoded as UTF-8 on its
own (so a bad byte is reported with its line), and a line longer than :data:`MAX_LINE_BYTES` is
refused rather than read into memory. Numbers are strict: token counts are integers (a JSON
``12.5`` or ``true`` is refused, not truncated) no larger than :data:`MAX_TOKENS`, times are
finite and span at most :data:`MAX_SPAN_S`, and a trace without a single request is an error.

Formats:
- ``mooncake``: JSONL with ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``
  (one chain id per 512-token block; count = ceil(input_length / 512)). Mooncake, FAST'25.
- ``azure``: CSV with ``TIMESTAMP`` (UTC datetime), ``ContextTokens``, ``GeneratedTokens``
  (Azure LLM inference traces 2023 and 2024). No prefix information.
- ``burstgpt``: CSV with ``Timestamp`` (s), ``Request tokens``, ``Response tokens``; rows with zero
  response tokens are failed requests in BurstGPT and are skipped.
- ``kvsim``: JSONL, kvsim's own superset: ``arrival_s``, ``prompt_tokens``, ``output_tokens`` and
  optional ``blocks``, ``unit_tokens``, ``output_blocks``, ``session``, ``job``, ``turn``.
- ``vidur``: Vidur's processed traces (``data/processed_traces/*.csv``): ``arrived_at`` (s),
  ``num_prefill_tokens``, ``num_decode_tokens`` (Vidur replays them as they are). Vidur's
  lengths-only files (no ``arrived_at``) have no arrival times and are refused.
- ``splitwise``: splitwise-sim's request traces (``traces/*.csv``): ``arrival_timestamp`` (s),
  ``prompt_size``, ``token_size``, ``batch_size`` (a row of batch_size b is b identical requests
  arriving together); ``request_id``, ``request_type`` and ``application_id`` are not used.
- ``sharegpt``: ShareGPT-style conversation JSON (``sharegpt.py``).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import math
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from .request import MAX_TOKENS, Request, TraceError, echo

MOONCAKE_UNIT_TOKENS = 512
MAX_LINE_BYTES = 1 << 20
"""A trace row is at most a few kilobytes (a 128k-token Mooncake prompt has 256 ids)."""
MAX_SPAN_S = 1e9
"""Arrivals at most ~31 years after the first row: simulated nanoseconds stay within int64."""
MAX_ID = 1 << 63
"""Content ids are int64 (hashes), as in the public traces."""

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}
_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def _compression(head: bytes) -> str | None:
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def _zstd_reader(raw):
    try:
        import zstandard
    except ImportError:
        raise TraceError(
            "reading a Zstandard-compressed trace needs the zstandard package: "
            "pip install 'kvsim[traces]' (or decompress it: zstd -d FILE)"
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def decompressed(raw) -> tuple[io.BufferedIOBase, str | None]:
    """A trace file opened in binary, decompressed on the way (gzip, bzip2, Zstandard: told by
    their magic bytes), and the compression's name (None: plain)."""
    kind = _compression(raw.peek(4)[:4])
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw), kind
    if kind == "bzip2":
        return bz2.BZ2File(raw), kind
    if kind == "zstd":
        return io.BufferedReader(_zstd_reader(raw)), kind
    return raw, kind


def read_error(path: Path, lineno: int, kind: str | None, e: BaseException) -> TraceError:
    """An unreadable file or corrupt compressed data, as one line."""
    what = f"{kind} data" if kind else "file"
    why = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return TraceError(f"{path}:{lineno + 1}: cannot read the {what} ({why})")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a trace file, decompressed and decoded; one-line
    :class:`TraceError` on anything unreadable."""
    errors = decompression_errors()
    lineno = 0
    kind = None
    try:
        with open(path, "rb") as raw:
            f, kind = decompressed(raw)
            with f:
                while line := f.readline(MAX_LINE_BYTES + 1):
                    lineno += 1
                    if len(line) > MAX_LINE_BYTES:
                        raise TraceError(
                            f"{path}:{lineno}: line longer than {MAX_LINE_BYTES:,} bytes; "
                            "is this a trace file?"
                        )
                    if lineno == 1:
                        _check_text_start(path, line)
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise TraceError(
                            f"{path}:{lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at "
                            f"column {e.start + 1})"
                        ) from None
                    yield lineno, text
    except TraceError:
        raise
    except errors as e:  # unreadable, or corrupt compressed data
        raise read_error(path, lineno, kind, e) from None


def _check_text_start(path: Path, line: bytes) -> None:
    for bom, name in _BOMS.items():
        if line.startswith(bom):
            raise TraceError(f"{path}:1: the file is {name} text; save it as UTF-8")


def _int_field(row: dict, key: str, where: str, minimum: int = 0, maximum=MAX_TOKENS) -> int:
    if key not in row:
        raise TraceError(f"{where}: missing field '{key}'")
    value = row[key]
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)  # a JSON 512.0: exact, so no silent truncation
    elif isinstance(value, str) and len(value) <= 32:
        try:
            number = int(value.strip())
        except ValueError:
            pass
    if number is None or not minimum <= number <= maximum:
        raise TraceError(
            f"{where}: field '{key}' is {echo(value, 80)}; expected an integer from {minimum} "
            f"to {maximum:,}"
        )
    return number


def _float_field(row: dict, key: str, where: str) -> float:
    if key not in row:
        raise TraceError(f"{where}: missing field '{key}'")
    value = row[key]
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            pass
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value)
        except ValueError:
            pass
    if not math.isfinite(number) or number < 0:
        raise TraceError(
            f"{where}: field '{key}' is {echo(value, 80)}; expected a finite number >= 0"
        )
    return number


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise TraceError(f"{where}: not a trace row (JSON nested too deep)") from None
        if not isinstance(row, dict):
            raise TraceError(f"{where}: expected a JSON object per line")
        yield where, row


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    lines = _lines(path)
    physical = [0]  # the file's line number of the text csv reads last (rows may span lines)

    def text():
        for lineno, line in lines:
            physical[0] = lineno
            yield line.removeprefix("\ufeff") if lineno == 1 else line

    reader = csv.DictReader(text())
    try:
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(
                f"{path}:1: missing column {missing[0]!r}; the header has {echo(header)}"
            )
        for row in reader:
            # DictReader keys extra cells under None and fills missing ones with None.
            if None in row or None in row.values():
                cells = len(header) + len(row.get(None, ())) - sum(v is None for v in row.values())
                raise TraceError(
                    f"{path}:{physical[0]}: {cells} cells; the header has {len(header)} columns"
                )
            yield f"{path}:{physical[0]}", row
    except csv.Error as e:
        raise TraceError(f"{path}:{physical[0]}: not valid CSV ({e})") from None


def _ordered(
    path: Path,
    rows: Iterator[tuple[str, float, Callable[[int, float], Request]]],
) -> Iterator[Request]:
    """Turn (where, absolute time, factory) rows into requests with times from the first row;
    a trace without a single request is an error."""
    origin = None
    last = -math.inf
    for index, (where, t, make) in enumerate(rows):
        if origin is None:
            origin = t
        if t < last:
            raise TraceError(f"{where}: timestamp goes backwards ({t - origin:.6f} s < previous)")
        if t - origin > MAX_SPAN_S:
            raise TraceError(
                f"{where}: timestamp is {t - origin:.3g} s after the first row's; a trace spans "
                f"at most {MAX_SPAN_S:.0e} s (check its unit)"
            )
        last = t
        yield make(index, t - origin)
    if origin is None:
        raise TraceError(f"{path}: no requests in the trace")


def _id_list(row: dict, key: str, where: str, default=None) -> tuple[int, ...]:
    ids = row.get(key, default)
    if (
        not isinstance(ids, list)
        or not all(type(i) is int for i in ids)
        or (ids and not (-MAX_ID <= min(ids) and max(ids) < MAX_ID))
    ):
        raise TraceError(f"{where}: field '{key}' must be a list of 64-bit integers")
    return tuple(ids)


def read_mooncake(path: Path) -> Iterator[Request]:
    """Mooncake JSONL (timestamps in ms, 512-token hash_ids)."""

    def rows():
        for where, row in _json_rows(path):
            t_ms = _float_field(row, "timestamp", where)
            prompt = _int_field(row, "input_length", where, minimum=1)
            output = _int_field(row, "output_length", where, minimum=0)
            ids = _id_list(row, "hash_ids", where)
            expected = math.ceil(prompt / MOONCAKE_UNIT_TOKENS)
            if len(ids) != expected:
                raise TraceError(
                    f"{where}: field 'hash_ids' has {len(ids)} ids; "
                    f"input_length {prompt} needs ceil({prompt}/512) = {expected}"
                )
            blocks = ids

            def make(i, t, prompt=prompt, output=output, blocks=blocks):
                return Request(i, t, prompt, max(1, output), blocks, MOONCAKE_UNIT_TOKENS)

            yield where, t_ms / 1000.0, make

    return _ordered(path, rows())


def _parse_datetime(value: str, where: str) -> float:
    text = value.strip()[:64]
    if "." in text:  # Azure writes 7 fractional digits; datetime takes at most 6.
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise TraceError(
            f"{where}: field 'TIMESTAMP' is {echo(value, 80)}; expected a datetime"
        ) from None


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

    return _ordered(path, rows())


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

    return _ordered(path, rows())


def read_vidur(path: Path) -> Iterator[Request]:
    """Vidur's processed trace CSV (arrived_at in seconds)."""
    required = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")

    def rows():
        try:
            for where, row in _csv_rows(path, required):
                t = _float_field(row, "arrived_at", where)
                prompt = _int_field(row, "num_prefill_tokens", where, minimum=1)
                output = _int_field(row, "num_decode_tokens", where, minimum=1)

                def make(i, t, prompt=prompt, output=output):
                    return Request(i, t, prompt, output)

                yield where, t, make
        except TraceError as e:
            if "missing column 'arrived_at'" in str(e):
                raise TraceError(
                    f"{path}:1: no arrived_at column: a lengths-only Vidur trace has no arrival "
                    "times to replay (give it times, or use a synthetic workload)"
                ) from None
            raise

    return _ordered(path, rows())


def read_splitwise(path: Path) -> Iterator[Request]:
    """splitwise-sim's trace CSV; a row of batch_size b is b requests arriving together."""
    required = ("arrival_timestamp", "prompt_size", "token_size", "batch_size")

    def rows():
        for where, row in _csv_rows(path, required):
            t = _float_field(row, "arrival_timestamp", where)
            prompt = _int_field(row, "prompt_size", where, minimum=1)
            output = _int_field(row, "token_size", where, minimum=1)
            batch = _int_field(row, "batch_size", where, minimum=1, maximum=4096)

            def make(i, t, prompt=prompt, output=output):
                return Request(i, t, prompt, output)

            for _ in range(batch):
                yield where, t, make

    return _ordered(path, rows())


def _optional_id(row: dict, key: str, where: str) -> int | None:
    value = row.get(key)
    if value is not None and (type(value) is not int or not -MAX_ID <= value < MAX_ID):
        raise TraceError(f"{where}: field '{key}' is {echo(value, 80)}; expected an integer")
    return value


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
    index = -1
    for index, (where, row) in enumerate(_json_rows(path)):
        sess = _optional_id(row, "session", where)
        if sess is not None and sess < 0:
            raise TraceError(f"{where}: field 'session' is {sess}; expected an integer >= 0")
        t_turn = _int_field(row, "turn", where, maximum=MAX_ID - 1) if "turn" in row else 0
        follow = sess is not None and t_turn > 0
        if follow:
            if sess != session or t_turn != turn + 1:
                raise TraceError(
                    f"{where}: turn {t_turn} of session {sess} must follow turn {t_turn - 1} "
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
            if t - origin > MAX_SPAN_S:
                raise TraceError(
                    f"{where}: timestamp is {t - origin:.3g} s after the first row's; a trace "
                    f"spans at most {MAX_SPAN_S:.0e} s (check its unit)"
                )
            last = t
        session, turn = sess, (t_turn if follow else 0)
        prompt = _int_field(row, "prompt_tokens", where, minimum=1)
        output = _int_field(row, "output_tokens", where, minimum=1)
        unit = _int_field(row, "unit_tokens", where, minimum=1) if "unit_tokens" in row else 512
        blocks = _id_list(row, "blocks", where, [])
        if blocks and len(blocks) != math.ceil(prompt / unit):
            raise TraceError(
                f"{where}: field 'blocks' has {len(blocks)} ids; prompt_tokens {prompt} "
                f"needs ceil({prompt}/{unit}) = {math.ceil(prompt / unit)}"
            )
        out_blocks = _id_list(row, "output_blocks", where, [])
        think = _float_field(row, "think_s", where) if "think_s" in row else 0.0
        job = _optional_id(row, "job", where)
        arrival = (t - origin) if t is not None and origin is not None else 0.0
        yield Request(index, arrival, prompt, output, blocks, unit, out_blocks, sess, job,
                      turn, think)  # fmt: skip
    if index < 0:
        raise TraceError(f"{path}: no requests in the trace")


def _read_sharegpt(path: Path) -> Iterator[Request]:
    from .sharegpt import read_sharegpt

    return read_sharegpt(path)


FORMATS: dict[str, Callable[[Path], Iterator[Request]]] = {
    "mooncake": read_mooncake,
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "kvsim": read_kvsim,
    "vidur": read_vidur,
    "splitwise": read_splitwise,
    "sharegpt": _read_sharegpt,
}
CSV_FORMATS = ("azure", "burstgpt", "vidur", "splitwise")
"""Formats with a header row."""


def read_trace(path: str | Path, fmt: str) -> Iterator[Request]:
    """Stream the requests of a trace file in one of :data:`FORMATS`."""
    path = Path(path)
    if fmt not in FORMATS:
        raise TraceError(
            f"{path}: unknown trace format {echo(fmt, 80)}; allowed: {', '.join(FORMATS)}"
        )
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    return FORMATS[fmt](path)


def guess_format(path: str | Path) -> str:
    """The format a file most likely has, from its first line."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    lines = _lines(path)
    try:
        first = next((line for _, line in lines), "").removeprefix("\ufeff")
    finally:
        lines.close()
    head = first.lstrip()
    if head.startswith("["):
        return "sharegpt"
    if head.startswith("{"):
        if "hash_ids" in first or "input_length" in first:
            return "mooncake"
        return "sharegpt" if '"conversations"' in first else "kvsim"
    if "ContextTokens" in first:
        return "azure"
    if "Request tokens" in first:
        return "burstgpt"
    if "num_prefill_tokens" in first:
        return "vidur"
    if "prompt_size" in first and "arrival_timestamp" in first:
        return "splitwise"
    raise TraceError(
        f"{path}:1: cannot tell the trace format; pass --format ({', '.join(FORMATS)})"
    )
