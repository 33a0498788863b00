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

Mooncake rows are parsed with orjson where it is installed (about 3x faster than the stdlib's
scanner on such lines), with the same requests and the same errors: orjson refuses some lines
the stdlib reads (``NaN``, ``1e400``, lone surrogates) and reads integers beyond 64 bits as
floats, so a line it refuses, or a row whose checks fail after orjson parsed it, is parsed again
by the stdlib, whose row then decides. The two also differ on deep nesting (orjson reads 1,024
levels where Python's recursion limit stops the stdlib, and 3.8 crashes on far deeper lines), so
only a line with few brackets (``_FAST_NESTING``) goes to orjson at all. Where the checks pass
the two rows hold the same values (a float field takes a huge integer and its correctly rounded
float alike).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import math
import zlib
from array import array
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import chain
from operator import countOf, itemgetter
from pathlib import Path

from .request import MAX_TOKENS, Request, TraceError, echo

try:
    from orjson import loads as _fast_loads
except ImportError:  # the stdlib parses every row then: the same requests, the same errors
    _fast_loads = None
_FAST_NESTING = 64
"""Opening brackets a line may hold to be parsed by orjson (a Mooncake row holds two)."""

MOONCAKE_UNIT_TOKENS = 512
MAX_LINE_BYTES = 1 << 20
"""A trace row is at most a few kilobytes (a 128k-token Mooncake prompt has 256 ids)."""
MAX_SPAN_S = 1e9
"""Arrivals at most ~31 years after the first row: simulated nanoseconds stay within int64."""
MAX_ID = 1 << 63
"""Content ids are int64 (hashes), as in the public traces."""

_MISSING = object()
"""A field the row does not have (``row.get(key, _MISSING)``)."""
_FLOAT_SAFE_INT = 1 << 1023
"""Integers below this convert to a finite float."""

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


def _lines(path: Path) -> Iterator[str]:
    """The text of every line of a trace file (line n is the n-th item), decompressed and decoded;
    one-line :class:`TraceError` on anything unreadable."""
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
                    yield text
    except TraceError:
        raise
    except errors as e:  # unreadable, or corrupt compressed data
        raise read_error(path, lineno, kind, e) from None


def _check_text_start(path: Path, line: bytes) -> None:
    for bom, name in _BOMS.items():
        if line.startswith(bom):
            raise TraceError(f"{path}:1: the file is {name} text; save it as UTF-8")


# NOTE: the field checks below are called once per row with the file and line number; the
# "file:line" text of an error is built only when there is an error. Each starts with a fast path
# for the common exact type and falls back to the general check, which decides every other case.


def _int_field(
    value, key: str, path: Path, lineno: int, minimum: int = 0, maximum: int = MAX_TOKENS
) -> int:
    """``value`` (``_MISSING``: the row has no ``key``) as an integer from minimum to maximum: an
    int, an integral finite float or a decimal string of at most 32 characters; bool refused."""
    if type(value) is int and minimum <= value <= maximum:
        return value
    if value is _MISSING:
        raise TraceError(f"{path}:{lineno}: missing field '{key}'")
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
            f"{path}:{lineno}: field '{key}' is {echo(value, 80)}; expected an integer from "
            f"{minimum} to {maximum:,}"
        )
    return number


def _float_field(value, key: str, path: Path, lineno: int) -> float:
    """``value`` (``_MISSING``: the row has no ``key``) as a finite float >= 0: an int or float
    (bool refused) or a string of at most 64 characters that ``float`` reads."""
    if type(value) is float and 0.0 <= value < math.inf:  # NaN fails both comparisons
        return value
    if type(value) is int and 0 <= value < _FLOAT_SAFE_INT:
        return float(value)
    if value is _MISSING:
        raise TraceError(f"{path}:{lineno}: missing field '{key}'")
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
            f"{path}:{lineno}: field '{key}' is {echo(value, 80)}; expected a finite number >= 0"
        )
    return number


_scan_json = json.JSONDecoder().scan_once
"""The stdlib decoder's scanner with ``json.loads``'s defaults: one JSON value from an index."""


def _json_value(line: str):
    """``json.loads(line)``, the common line (a value from its first character to its end or a
    final newline) parsed by the scanner alone."""
    # NOTE: json.loads is a BOM check, a skip of leading whitespace, this scan and a check that
    # only whitespace follows; on such a line the first two find nothing and the last passes. Any
    # other line (a BOM, leading whitespace, other trailing text, an error) goes through
    # json.loads, which returns or raises as it always has.
    try:
        value, end = _scan_json(line, 0)
    except Exception:
        return json.loads(line)
    if end == len(line) or line[end:] == "\n":
        return value
    return json.loads(line)


def _json_row(line: str, path: Path, lineno: int) -> dict:
    """The stdlib's parse of a non-blank JSONL line as an object, or its one-line error."""
    try:
        row = _json_value(line)
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise TraceError(f"{path}:{lineno}: not a trace row (JSON nested too deep)") from None
    if not isinstance(row, dict):
        raise TraceError(f"{path}:{lineno}: expected a JSON object per line")
    return row


def _json_rows(path: Path, fast: bool = False) -> Iterator[tuple[int, dict, str | None]]:
    """(line number, object, line) of every non-blank line of a JSONL file. ``fast``: parsed by
    orjson where installed and it reads the line as an object, and then the line comes along (a
    caller whose checks fail on that row parses it again with :func:`_json_row`); else the
    stdlib's, and the line is None."""
    loads = _fast_loads if fast else None
    for lineno, line in enumerate(_lines(path), 1):
        if line.isspace():  # a line is never empty: it has a character or its newline
            continue
        # NOTE: nesting is where the two parsers part: the stdlib refuses what Python's recursion
        # limit refuses, orjson more than 1,024 levels (and 3.8 crashes on some far deeper
        # lines). A line with at most _FAST_NESTING brackets nests no deeper, where both read it.
        if loads is not None and line.count("[") + line.count("{") <= _FAST_NESTING:
            try:
                row = loads(line)
            except ValueError:  # orjson.JSONDecodeError: the stdlib decides
                row = None
            if type(row) is dict:
                yield lineno, row, line
                continue
        yield lineno, _json_row(line, path, lineno), None


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line number, the cells of the ``required`` columns) of every data row of a CSV file, as
    ``csv.DictReader`` reads it: blank lines skipped, a repeated column name meaning its last
    column; the line number is the row's last line (a quoted cell may span lines)."""
    lines = _lines(path)
    first = next(lines, None)
    reader = csv.reader(lines if first is None else chain((first.removeprefix("\ufeff"),), lines))
    try:
        header = next(reader, None) or []
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(
                f"{path}:1: missing column {missing[0]!r}; the header has {echo(header)}"
            )
        width = len(header)
        columns = itemgetter(*(width - 1 - header[::-1].index(c) for c in required))
        for cells in reader:
            if len(cells) != width:
                if not cells:
                    continue
                raise TraceError(
                    f"{path}:{reader.line_num}: {_dict_cells(header, cells)} cells; the header "
                    f"has {width} columns"
                )
            yield reader.line_num, columns(cells)
    except csv.Error as e:
        raise TraceError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _dict_cells(header: list[str], cells: list[str]) -> int:
    """The cell count an error quotes for a row of the wrong width, counted from the dict
    ``csv.DictReader`` makes of it (extra cells under None, missing ones filled with None), as
    the error always has."""
    row: dict = dict(zip(header, cells, strict=False))
    if len(header) < len(cells):
        row[None] = cells[len(header) :]
    else:
        row.update(dict.fromkeys(header[len(cells) :]))
    return len(header) + len(row.get(None, ())) - sum(v is None for v in row.values())


def _time_error(path: Path, lineno: int, t: float, origin: float, last: float) -> TraceError:
    """The error for an arrival time before the previous one or too far after the first."""
    if t < last:
        return TraceError(
            f"{path}:{lineno}: timestamp goes backwards ({t - origin:.6f} s < previous)"
        )
    return TraceError(
        f"{path}:{lineno}: timestamp is {t - origin:.3g} s after the first row's; a trace spans "
        f"at most {MAX_SPAN_S:.0e} s (check its unit)"
    )


def _no_requests(path: Path) -> TraceError:
    return TraceError(f"{path}: no requests in the trace")


def _ordered(path: Path, rows: Iterator[tuple[int, float, int, int, int]]) -> Iterator[Request]:
    """Turn (line number, absolute time, prompt tokens, output tokens, copies) rows into
    requests with times from the first row; a trace without a single request is an error."""
    origin = None
    last = -math.inf
    index = 0
    for lineno, t, prompt, output, copies in rows:
        if origin is None:
            origin = t
        if t < last or t - origin > MAX_SPAN_S:
            raise _time_error(path, lineno, t, origin, last)
        last = t
        for _ in range(copies):
            yield Request(index, t - origin, prompt, output)
            index += 1
    if origin is None:
        raise _no_requests(path)


def _id_list(row: dict, key: str, path: Path, lineno: int, default=None) -> tuple[int, ...]:
    """``row[key]`` as a tuple of 64-bit integers (``type(i) is int``: bool refused)."""
    ids = row.get(key, default)
    # NOTE: the fast path checks the exact type of every id by counting, then the int64 range in
    # one pass of array's C conversion (which takes exactly the ints in range); anything else is
    # decided by the plain check below.
    if type(ids) is list and countOf(map(type, ids), int) == len(ids):
        try:
            array("q", ids)
        except OverflowError:
            pass
        else:
            return tuple(ids)
    if (
        not isinstance(ids, list)
        or not all(type(i) is int for i in ids)
        or (ids and not (-MAX_ID <= min(ids) and max(ids) < MAX_ID))
    ):
        raise TraceError(f"{path}:{lineno}: field '{key}' must be a list of 64-bit integers")
    return tuple(ids)


def _mooncake_fields(row: dict, path: Path, lineno: int) -> tuple[float, int, int, tuple]:
    """A Mooncake row's timestamp (ms), input and output lengths and hash ids, checked."""
    t_ms = _float_field(row.get("timestamp", _MISSING), "timestamp", path, lineno)
    prompt = _int_field(row.get("input_length", _MISSING), "input_length", path, lineno, 1)
    output = _int_field(row.get("output_length", _MISSING), "output_length", path, lineno)
    ids = _id_list(row, "hash_ids", path, lineno)
    expected = math.ceil(prompt / MOONCAKE_UNIT_TOKENS)
    if len(ids) != expected:
        raise TraceError(
            f"{path}:{lineno}: field 'hash_ids' has {len(ids)} ids; "
            f"input_length {prompt} needs ceil({prompt}/512) = {expected}"
        )
    return t_ms, prompt, output, ids


def read_mooncake(path: Path) -> Iterator[Request]:
    """Mooncake JSONL (timestamps in ms, 512-token hash_ids)."""
    origin = None
    last = -math.inf
    index = 0
    for lineno, row, line in _json_rows(path, fast=True):
        try:
            t_ms, prompt, output, ids = _mooncake_fields(row, path, lineno)
        except TraceError:
            if line is None:
                raise
            # orjson parsed it: the stdlib's row decides, and words the error if there is one.
            t_ms, prompt, output, ids = _mooncake_fields(_json_row(line, path, lineno), path,
                                                         lineno)  # fmt: skip
        t = t_ms / 1000.0
        if origin is None:
            origin = t
        if t < last or t - origin > MAX_SPAN_S:
            raise _time_error(path, lineno, t, origin, last)
        last = t
        yield Request(index, t - origin, prompt, max(1, output), ids, MOONCAKE_UNIT_TOKENS)
        index += 1
    if origin is None:
        raise _no_requests(path)


def _parse_datetime(value: str, path: Path, lineno: int) -> float:
    text = value.strip()[:64]
    if "." in text:  # Azure writes 7 fractional digits; datetime takes at most 6.
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise TraceError(
            f"{path}:{lineno}: field 'TIMESTAMP' is {echo(value, 80)}; expected a datetime"
        ) from None


def read_azure(path: Path) -> Iterator[Request]:
    """Azure LLM inference trace CSV (2023 or 2024)."""
    required = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

    def rows():
        for lineno, (stamp, context, generated) in _csv_rows(path, required):
            t = _parse_datetime(stamp, path, lineno)
            prompt = _int_field(context, "ContextTokens", path, lineno, 1)
            output = _int_field(generated, "GeneratedTokens", path, lineno)
            yield lineno, t, prompt, max(1, output), 1

    return _ordered(path, rows())


def read_burstgpt(path: Path) -> Iterator[Request]:
    """BurstGPT CSV; failed requests (zero response tokens) are skipped."""
    required = ("Timestamp", "Request tokens", "Response tokens")

    def rows():
        for lineno, (stamp, request, response) in _csv_rows(path, required):
            t = _float_field(stamp, "Timestamp", path, lineno)
            prompt = _int_field(request, "Request tokens", path, lineno)
            output = _int_field(response, "Response tokens", path, lineno)
            if output == 0 or prompt == 0:
                continue
            yield lineno, t, prompt, output, 1

    return _ordered(path, rows())


def read_vidur(path: Path) -> Iterator[Request]:
    """Vidur's processed trace CSV (arrived_at in seconds)."""
    required = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")

    def rows():
        try:
            for lineno, (arrived, prefill, decode) in _csv_rows(path, required):
                t = _float_field(arrived, "arrived_at", path, lineno)
                prompt = _int_field(prefill, "num_prefill_tokens", path, lineno, 1)
                output = _int_field(decode, "num_decode_tokens", path, lineno, 1)
                yield lineno, t, prompt, output, 1
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
        for lineno, (arrival, prompt_size, token_size, batch_size) in _csv_rows(path, required):
            t = _float_field(arrival, "arrival_timestamp", path, lineno)
            prompt = _int_field(prompt_size, "prompt_size", path, lineno, 1)
            output = _int_field(token_size, "token_size", path, lineno, 1)
            batch = _int_field(batch_size, "batch_size", path, lineno, 1, 4096)
            yield lineno, t, prompt, output, batch

    return _ordered(path, rows())


def _optional_id(row: dict, key: str, path: Path, lineno: int) -> int | None:
    value = row.get(key)
    if value is not None and (type(value) is not int or not -MAX_ID <= value < MAX_ID):
        raise TraceError(
            f"{path}:{lineno}: field '{key}' is {echo(value, 80)}; expected an integer"
        )
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
    for index, (lineno, row, _) in enumerate(_json_rows(path)):
        sess = _optional_id(row, "session", path, lineno)
        if sess is not None and sess < 0:
            raise TraceError(
                f"{path}:{lineno}: field 'session' is {sess}; expected an integer >= 0"
            )
        t_turn = row.get("turn", _MISSING)
        t_turn = (
            0 if t_turn is _MISSING else _int_field(t_turn, "turn", path, lineno, 0, MAX_ID - 1)
        )
        follow = sess is not None and t_turn > 0
        arrival_s = row.get("arrival_s", _MISSING)
        if follow:
            if sess != session or t_turn != turn + 1:
                raise TraceError(
                    f"{path}:{lineno}: turn {t_turn} of session {sess} must follow turn "
                    f"{t_turn - 1} of that session on the row before (a session's turns are "
                    "consecutive rows)"
                )
            t = (
                None
                if arrival_s is _MISSING
                else _float_field(arrival_s, "arrival_s", path, lineno)
            )
        else:
            t = _float_field(arrival_s, "arrival_s", path, lineno)
            if origin is None:
                origin = t
            if t < last or t - origin > MAX_SPAN_S:
                raise _time_error(path, lineno, t, origin, last)
            last = t
        session, turn = sess, (t_turn if follow else 0)
        prompt = _int_field(row.get("prompt_tokens", _MISSING), "prompt_tokens", path, lineno, 1)
        output = _int_field(row.get("output_tokens", _MISSING), "output_tokens", path, lineno, 1)
        unit = row.get("unit_tokens", _MISSING)
        unit = 512 if unit is _MISSING else _int_field(unit, "unit_tokens", path, lineno, 1)
        blocks = _id_list(row, "blocks", path, lineno, [])
        if blocks and len(blocks) != math.ceil(prompt / unit):
            raise TraceError(
                f"{path}:{lineno}: field 'blocks' has {len(blocks)} ids; prompt_tokens {prompt} "
                f"needs ceil({prompt}/{unit}) = {math.ceil(prompt / unit)}"
            )
        out_blocks = _id_list(row, "output_blocks", path, lineno, [])
        think = row.get("think_s", _MISSING)
        think = 0.0 if think is _MISSING else _float_field(think, "think_s", path, lineno)
        job = _optional_id(row, "job", path, lineno)
        arrival = (t - origin) if t is not None and origin is not None else 0.0
        yield Request(index, arrival, prompt, output, blocks, unit, out_blocks, sess, job,
                      turn, think)  # fmt: skip
    if index < 0:
        raise _no_requests(path)


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
        first = next(lines, "").removeprefix("\ufeff")
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
