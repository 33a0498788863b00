"""The trace readers against plain reference readers written here: the same requests (values and
types), the same one-line errors, over files with rows of every accepted shape and bad rows of
every kind.

The readers take fast paths (a scanner call instead of ``json.loads``, exact-type checks, an
``array`` range check, ``csv.reader`` instead of ``csv.DictReader``); the references below are the
plain rules — ``json.loads`` per line, ``csv.DictReader``, explicit checks — so that a change to a
fast path that accepts, rejects or words anything differently fails here. Mooncake rows are
checked parsed by orjson (as installed) and by the stdlib alone.
"""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.traces import Request, TraceError, read_trace, readers

MAX_TOKENS = 100_000_000
I64 = 1 << 63


class Bad(Exception):
    """A reference error: the message after ``file:line: ``."""


def shown(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ref_number(row: dict, key: str) -> float:
    """A finite float >= 0 from an int or float (not bool) or a string of at most 64 chars."""
    if key not in row:
        raise Bad(f"missing field '{key}'")
    value = row[key]
    x = None
    if type(value) in (int, float):
        try:
            x = float(value)
        except OverflowError:
            x = None
    elif type(value) is str and len(value) <= 64:
        try:
            x = float(value)
        except ValueError:
            x = None
    if x is None or math.isnan(x) or math.isinf(x) or x < 0:
        raise Bad(f"field '{key}' is {shown(value)}; expected a finite number >= 0")
    return x


def ref_integer(row: dict, key: str, low: int, high: int = MAX_TOKENS) -> int:
    """An int (not bool), an integral finite float or a string of at most 32 chars int() reads."""
    if key not in row:
        raise Bad(f"missing field '{key}'")
    value = row[key]
    x = None
    if type(value) is int:
        x = value
    elif type(value) is float and math.isfinite(value) and value == math.floor(value):
        x = int(value)
    elif type(value) is str and len(value) <= 32:
        try:
            x = int(value)  # int() ignores surrounding whitespace itself
        except ValueError:
            x = None
    if x is None or x < low or x > high:
        raise Bad(f"field '{key}' is {shown(value)}; expected an integer from {low} to {high:,}")
    return x


def ref_ids(row: dict, key: str, default) -> tuple[int, ...]:
    ids = row.get(key, default)
    ok = type(ids) is list
    for i in ids if ok else ():
        ok = ok and type(i) is int and -I64 <= i <= I64 - 1
    if not ok:
        raise Bad(f"field '{key}' must be a list of 64-bit integers")
    return tuple(ids)


def ref_id(row: dict, key: str):
    value = row.get(key)
    if value is None:
        return None
    if type(value) is not int or value < -I64 or value >= I64:
        raise Bad(f"field '{key}' is {shown(value)}; expected an integer")
    return value


class Clock:
    """Arrival times from the first ordered row, never backwards, spanning at most 1e9 s."""

    def __init__(self) -> None:
        self.origin: float | None = None
        self.last = -math.inf

    def __call__(self, t: float) -> float:
        if self.origin is None:
            self.origin = t
        if t < self.last:
            raise Bad(f"timestamp goes backwards ({t - self.origin:.6f} s < previous)")
        if t - self.origin > 1e9:
            raise Bad(
                f"timestamp is {t - self.origin:.3g} s after the first row's; a trace spans "
                "at most 1e+09 s (check its unit)"
            )
        self.last = t
        return t - self.origin


def text_lines(path: Path) -> list[str]:
    """The file's lines as the readers split them: at b'\\n' only, each with its newline."""
    pieces = path.read_bytes().decode("utf-8").split("\n")
    return [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def ref_json_rows(path: Path):
    for n, line in enumerate(text_lines(path), 1):
        if line.strip() == "":
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise Bad(f"{n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise Bad(f"{n}: not a trace row (JSON nested too deep)") from None
        if type(row) is not dict:
            raise Bad(f"{n}: expected a JSON object per line")
        yield n, row


def mooncake_request(row: dict, index: int, clock: Clock) -> Request:
    ts = ref_number(row, "timestamp")
    prompt = ref_integer(row, "input_length", 1)
    output = ref_integer(row, "output_length", 0)
    ids = ref_ids(row, "hash_ids", None)
    need = (prompt + 511) // 512
    if len(ids) != need:
        raise Bad(
            f"field 'hash_ids' has {len(ids)} ids; input_length {prompt} needs "
            f"ceil({prompt}/512) = {need}"
        )
    return Request(index, clock(ts / 1000.0), prompt, max(output, 1), ids, 512)


def ref_mooncake(path: Path):
    clock = Clock()
    index = 0
    for n, row in ref_json_rows(path):
        try:
            request = mooncake_request(row, index, clock)
        except Bad as e:
            raise Bad(f"{n}: {e}") from None
        yield request
        index += 1
    if index == 0:
        raise Bad("no requests in the trace")


def kvsim_request(row: dict, index: int, clock: Clock, prev: tuple) -> tuple[Request, tuple]:
    """The row's request and its (session, turn); ``prev``: the row before's."""
    sess = ref_id(row, "session")
    if sess is not None and sess < 0:
        raise Bad(f"field 'session' is {sess}; expected an integer >= 0")
    turn = ref_integer(row, "turn", 0, I64 - 1) if "turn" in row else 0
    if sess is not None and turn > 0:
        if prev != (sess, turn - 1):
            raise Bad(
                f"turn {turn} of session {sess} must follow turn {turn - 1} of that "
                "session on the row before (a session's turns are consecutive rows)"
            )
        t = ref_number(row, "arrival_s") if "arrival_s" in row else None
        arrival = 0.0 if t is None or clock.origin is None else t - clock.origin
    else:
        turn = 0
        arrival = clock(ref_number(row, "arrival_s"))
    prompt = ref_integer(row, "prompt_tokens", 1)
    output = ref_integer(row, "output_tokens", 1)
    unit = ref_integer(row, "unit_tokens", 1) if "unit_tokens" in row else 512
    blocks = ref_ids(row, "blocks", [])
    need = -(-prompt // unit)
    if blocks and len(blocks) != need:
        raise Bad(
            f"field 'blocks' has {len(blocks)} ids; prompt_tokens {prompt} needs "
            f"ceil({prompt}/{unit}) = {need}"
        )
    out_blocks = ref_ids(row, "output_blocks", [])
    think = ref_number(row, "think_s") if "think_s" in row else 0.0
    job = ref_id(row, "job")
    request = Request(index, arrival, prompt, output, blocks, unit, out_blocks, sess, job, turn,
                      think)  # fmt: skip
    return request, (sess, turn)


def ref_kvsim(path: Path):
    clock = Clock()
    prev: tuple = (None, 0)
    index = -1
    for index, (n, row) in enumerate(ref_json_rows(path)):
        try:
            request, prev = kvsim_request(row, index, clock, prev)
        except Bad as e:
            raise Bad(f"{n}: {e}") from None
        yield request
    if index < 0:
        raise Bad("no requests in the trace")


def ref_datetime(row: dict, key: str) -> float:
    text = row[key].strip()[:64]
    head, dot, frac = text.partition(".")
    try:
        return datetime.fromisoformat(head + dot + frac[:6]).timestamp()
    except (ValueError, OverflowError, OSError):
        raise Bad(f"field '{key}' is {shown(row[key])}; expected a datetime") from None


CSV_RULES = {
    # format: (time column, its parser, prompt column and minimum, output column and minimum)
    "azure": ("TIMESTAMP", ref_datetime, "ContextTokens", 1, "GeneratedTokens", 0),
    "burstgpt": ("Timestamp", ref_number, "Request tokens", 0, "Response tokens", 0),
    "vidur": ("arrived_at", ref_number, "num_prefill_tokens", 1, "num_decode_tokens", 1),
    "splitwise": ("arrival_timestamp", ref_number, "prompt_size", 1, "token_size", 1),
}


def ref_csv(path: Path, fmt: str):
    time_key, parse_time, prompt_key, prompt_min, output_key, output_min = CSV_RULES[fmt]
    lines = text_lines(path)
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    required = [time_key, prompt_key, output_key] + (["batch_size"] if fmt == "splitwise" else [])
    for key in required:
        if key not in header:
            if fmt == "vidur" and key == "arrived_at":
                raise Bad(
                    "1: no arrived_at column: a lengths-only Vidur trace has no arrival times "
                    "to replay (give it times, or use a synthetic workload)"
                )
            raise Bad(f"1: missing column {key!r}; the header has {shown(header, 200)}")
    clock = Clock()
    index = 0
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as e:
            raise Bad(f"{reader.reader.line_num}: not valid CSV ({e})") from None
        # NOTE: DictReader's own line_num is that of the last blank line it skipped, if any.
        n = reader.reader.line_num
        if None in row or None in row.values():  # a row of the wrong width
            cells = len(header) + len(row.get(None, [])) - list(row.values()).count(None)
            raise Bad(f"{n}: {cells} cells; the header has {len(header)} columns")
        try:
            t = parse_time(row, time_key)
            prompt = ref_integer(row, prompt_key, prompt_min)
            output = ref_integer(row, output_key, output_min)
            copies = ref_integer(row, "batch_size", 1, 4096) if fmt == "splitwise" else 1
            if fmt == "burstgpt" and (prompt == 0 or output == 0):
                continue
            arrival = clock(t)
        except Bad as e:
            raise Bad(f"{n}: {e}") from None
        for _ in range(copies):
            yield Request(index, arrival, prompt, max(output, 1))
            index += 1
    if index == 0:
        raise Bad("no requests in the trace")


REFERENCES = {"mooncake": ref_mooncake, "kvsim": ref_kvsim}


def outcomes(path: Path, fmt: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """(requests' repr, error) of the reader and of the reference; repr tells 1 from 1.0 and True,
    and 0.0 from -0.0."""
    got: list[Request] = []
    error = None
    try:
        got.extend(read_trace(path, fmt))
    except TraceError as e:
        error = str(e)
    want: list[Request] = []
    ref_error = None
    reference = REFERENCES.get(fmt) or (lambda p: ref_csv(p, fmt))
    try:
        want.extend(reference(path))
    except Bad as e:
        ref_error = f"{path}:{e}" if str(e)[0].isdigit() else f"{path}: {e}"
    return (repr(got), error), (repr(want), ref_error)


# ---- Mooncake ------------------------------------------------------------------------------------


def mooncake_line(rng: random.Random, t_ms: float) -> str:
    """An accepted Mooncake row in one of its shapes."""
    prompt = rng.choice([1, 2, 511, 512, 513, 1024, 1025, 4000, 100_000])
    ids = [rng.choice([0, 1, 7, -5, I64 - 1, -I64, 123456789012]) for _ in range(-(-prompt // 512))]
    ts = rng.choice([f"{t_ms!r}", f'"{t_ms!r}"', f'" {t_ms!r} "', f"{t_ms!r}e0", f'"{t_ms!r}e0"']
                    + ([f"{t_ms:.0f}", f'"{t_ms:.0f}"'] if t_ms.is_integer() else []))  # fmt: skip
    length = rng.choice([f"{prompt}", f"{prompt}.0", f'"{prompt}"', f'" {prompt} "',
                         f'"+{prompt}"', f"{prompt}E0"])  # fmt: skip
    output = rng.choice(["0", "1", "7", "7.0", '"0"', '"12"', "2000", "-0.0", "100000000"])
    fields = [f'"timestamp": {ts}', f'"input_length": {length}', f'"output_length": {output}',
              f'"hash_ids": {json.dumps(ids)}']  # fmt: skip
    rng.shuffle(fields)
    extra = rng.choice(["", ', "x": [true, false, null]', ', "note": "true"', ', "y": {"z": 1.5}'])
    text = "{" + ", ".join(fields) + extra + "}"
    pad = rng.random()
    if pad < 0.1:
        return " \t" + text
    if pad < 0.2:
        return text + "  "
    if pad < 0.3:
        return text + "\r"
    return text


@pytest.fixture(params=["orjson", "stdlib"])
def parser(request, monkeypatch):
    """Mooncake rows parsed by orjson (installed with kvsim), then by the stdlib alone."""
    if request.param == "stdlib":
        monkeypatch.setattr(readers, "_fast_loads", None)
    else:
        assert readers._fast_loads is orjson.loads
    return request.param


def test_mooncake_accepted_shapes_give_the_references_requests(tmp_path, parser):
    rng = random.Random(7)
    lines, t_ms = [], 0.0
    for i in range(3000):
        t_ms += rng.choice([0.0, 0.0, 0.5, 1.0, 17.25, 1000.0])
        lines.append(mooncake_line(rng, t_ms))
        if i % 97 == 0:
            lines.append(rng.choice(["", "   ", "\t", "\x0c", "\r"]))  # blank: skipped
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines))  # the last line without its newline
    got, want = outcomes(p, "mooncake")
    assert want[1] is None and want[0].count("Request(") == 3000  # the file is all accepted
    assert got == want


GOOD_MOONCAKE = '{"timestamp": 5, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}'


def good_mooncake(t_ms: int) -> str:
    return GOOD_MOONCAKE.replace('"timestamp": 5', f'"timestamp": {t_ms}')


def mooncake_row(timestamp="6", input_length="6", output_length="1", hash_ids="[1]") -> str:
    """A Mooncake row with these JSON texts as its values (None: the field left out)."""
    fields = {"timestamp": timestamp, "input_length": input_length,
              "output_length": output_length, "hash_ids": hash_ids}  # fmt: skip
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items() if v is not None) + "}"


BAD_TIMESTAMPS = ["-1", "-1e-300", '"x"', "NaN", "Infinity", "-Infinity", "1e400", "true", "false",
                  "null", "[]", "{}", '"nan"', '"inf"', '"-3"', f'"{"1" * 65}"', "4e12", "-0.0",
                  str(1 << 1023), str((1 << 1024) - 1), str(1 << 1030), str(1 << 1100),
                  str(-(1 << 64))]  # fmt: skip
BAD_LENGTHS = ["0", "-1", "12.5", "true", "false", '"12.5"', '"1e3"', "1e21", "100000001", '"x"',
               "null", "[6]", "NaN", "Infinity", f'"{"0" * 32}6"', str(I64), str(1 << 64),
               str(-(1 << 63) - 1)]  # fmt: skip
BAD_ID_LISTS = ["null", '"1, 2"', "[1, true]", "[false, 1]", "[1.0, 2]", '[1, "2"]', "[1, null]",
                f"[1, {I64}]", f"[{-I64 - 1}, 1]", f"[1, {1 << 70}]", "[[1], 2]", "{}", "[1]",
                "[1, 2, 3]", "[]"]  # fmt: skip


@pytest.mark.parametrize(
    "line",
    ["not json", GOOD_MOONCAKE + " x", GOOD_MOONCAKE[:-1], "\ufeff" + GOOD_MOONCAKE,
     "\x0c" + GOOD_MOONCAKE, GOOD_MOONCAKE + "\x0c", "[1]", "5", '"text"', "null",
     "[" * 100_000 + "]" * 100_000, mooncake_row(timestamp=None),
     mooncake_row(input_length=None), mooncake_row(output_length=None),
     mooncake_row(hash_ids=None)]
    + [mooncake_row(timestamp=v) for v in BAD_TIMESTAMPS]
    + [mooncake_row(input_length=v) for v in BAD_LENGTHS]
    + [mooncake_row(output_length=v) for v in ["-1", "false", "0.5", '"-1"', "100000001"]]
    + [mooncake_row(input_length="600", hash_ids=v) for v in BAD_ID_LISTS],
    ids=lambda line: line[:60],
)  # fmt: skip
def test_bad_mooncake_rows_give_the_references_error(tmp_path, line, parser):
    """The bad row on line 3, after an accepted row and a blank line, before an accepted one:
    the same requests come first and then the same error."""
    p = tmp_path / "m.jsonl"
    p.write_text(f"{good_mooncake(1)}\n\n{line}\n{good_mooncake(9)}\n")
    got, want = outcomes(p, "mooncake")
    assert got == want
    assert want[0].count("Request(") == 1 and want[1].startswith(f"{p}:3: ")


def test_mooncake_timestamps_beyond_64_bits_give_the_references_requests(tmp_path, parser):
    """orjson reads an integer beyond 64 bits as a float: a timestamp takes either alike (its
    correctly rounded float), so an accepted trace of such times gives the same requests."""
    p = tmp_path / "m.jsonl"
    base = (1 << 70) + 12345
    rows = [mooncake_row(timestamp=str(base + k * 1000), hash_ids="[5]") for k in range(50)]
    rows += [mooncake_row(timestamp=str(base + 10**7 + k), hash_ids="[5]") for k in range(3)]
    p.write_text("\n".join(rows) + "\n")
    got, want = outcomes(p, "mooncake")
    assert want[1] is None and want[0].count("Request(") == 53
    assert got == want


def test_mooncake_rows_are_parsed_by_orjson_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        readers, "_fast_loads", lambda line: calls.append(line) or orjson.loads(line)
    )
    p = tmp_path / "m.jsonl"
    p.write_text(f"{good_mooncake(1)}\n\n{good_mooncake(2)}\n{good_mooncake(3)}\n")
    assert len(list(read_trace(p, "mooncake"))) == 3
    assert len(calls) == 3


@settings(max_examples=300, deadline=None)
@given(
    value=st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
    | st.from_regex(r"\A[0-9]{1,25}(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?\Z", fullmatch=True)
)
def test_orjson_reads_numbers_as_the_stdlib_does(value):
    """The fast path's premise: where orjson reads a number, it is the stdlib's number (floats
    correctly rounded alike), except integers beyond 64 bits (floats there, checked above)."""
    text = repr(value) if isinstance(value, float) else value
    try:
        fast = orjson.loads(text)
    except orjson.JSONDecodeError:
        return  # refused: the stdlib parses the line then
    slow = json.loads(text)
    if type(slow) is int and not -(1 << 63) <= slow < 1 << 64:
        assert type(fast) is float and fast == float(slow)
    else:
        assert type(fast) is type(slow) and repr(fast) == repr(slow)


def test_a_mooncake_row_too_deep_for_the_stdlib_gives_the_references_error(tmp_path, parser):
    """An otherwise good row whose extra field nests 1,020 lists deep: the stdlib's scanner
    raises RecursionError there (Python's limit is 1,000), so the reference's answer is "not a
    trace row (JSON nested too deep)" on line 2. orjson reads the row (its limit, where it has
    one, is 1,024 levels) and the row's checks pass, so nothing hands the line to the stdlib."""
    p = tmp_path / "m.jsonl"
    deep = "[" * 1020 + "]" * 1020
    p.write_text(f'{good_mooncake(1)}\n{GOOD_MOONCAKE[:-1]}, "note": {deep}}}\n')
    got, want = outcomes(p, "mooncake")
    assert want[1] == f"{p}:2: not a trace row (JSON nested too deep)"
    assert got == want


def test_a_mooncake_line_nested_300k_deep_is_a_one_line_error_not_a_crash(tmp_path):
    """A 600 kB line (under the 1 MiB line limit) of 300,000 nested lists: the stdlib path
    answers "not a trace row (JSON nested too deep)"; the orjson path must not take the process
    down (run in a child process so that a crash fails this test instead of ending the test run)."""
    import subprocess
    import sys

    p = tmp_path / "m.jsonl"
    p.write_text(f"{good_mooncake(1)}\n" + "[" * 300_000 + "]" * 300_000 + "\n")
    code = (
        "import sys\n"
        "from kvsim.traces import TraceError, read_trace\n"
        "try:\n"
        "    list(read_trace(sys.argv[1], 'mooncake'))\n"
        "except TraceError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-300:]}"
    assert done.stdout == f"{p}:2: not a trace row (JSON nested too deep)\n"


def test_mooncake_times_backwards_beyond_the_span_and_no_rows(tmp_path, parser):
    p = tmp_path / "m.jsonl"
    row = '{{"timestamp": {}, "input_length": 1, "output_length": 1, "hash_ids": [1]}}'
    for times in ([5, 4], [0, 1e12, 1e12 + 1], [0, 1e12 + 1], [2.5, 2.5, 2.4999]):
        p.write_text("".join(row.format(t) + "\n" for t in times))
        got, want = outcomes(p, "mooncake")
        assert got == want and want[1] is not None
    for text in ("", "\n \n\t\n"):
        p.write_text(text)
        got, want = outcomes(p, "mooncake")
        assert got == want == (repr([]), f"{p}: no requests in the trace")


# ---- kvsim JSONL ---------------------------------------------------------------------------------


def kvsim_rows(rng: random.Random, n: int) -> list[dict]:
    rows, t, session = [], 3.0, 0  # the first arrival is the origin: not 0, to tell 0.0 apart
    while len(rows) < n:
        t += rng.choice([0.0, 0.5, 1.25])
        unit = rng.choice([None, 256, 512, 16])
        prompt = rng.choice([1, 16, 255, 256, 257, 1500])
        arrival = rng.choice([t, int(t), str(t)]) if t == int(t) else t
        output = rng.choice([1, 5, 5.0, "9"])
        row: dict = {"arrival_s": arrival, "prompt_tokens": prompt, "output_tokens": output}
        if unit is not None:
            row["unit_tokens"] = unit
        if rng.random() < 0.6:
            row["blocks"] = [
                rng.choice([0, 3, I64 - 1, -I64]) for _ in range(-(-prompt // (unit or 512)))
            ]
        if rng.random() < 0.3:
            row["output_blocks"] = [rng.randrange(1000) for _ in range(rng.randrange(3))]
        if rng.random() < 0.2:
            row["job"] = rng.choice([0, 5, None])
        if rng.random() < 0.4:  # a session of 1 to 3 turns
            turns = rng.randint(1, 3)
            for turn in range(turns):
                one = dict(row, session=session, turn=turn, think_s=rng.choice([0, 0.5, "2"]))
                if turn and rng.random() < 0.5:
                    del one["arrival_s"]
                rows.append(one)
            session += 1
        else:
            rows.append(row)
    return rows


def test_kvsim_accepted_shapes_give_the_references_requests(tmp_path):
    rows = kvsim_rows(random.Random(3), 2000)
    p = tmp_path / "k.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, want = outcomes(p, "kvsim")
    assert want[1] is None and want[0].count("Request(") == len(rows)
    assert got == want


GOOD_KVSIM = {"arrival_s": 1, "prompt_tokens": 600, "output_tokens": 2}


@pytest.mark.parametrize(
    "change",
    [{"session": -1}, {"session": True}, {"session": 1.0}, {"session": I64}, {"job": "3"},
     {"job": -I64 - 1}, {"turn": -1}, {"turn": 1.5}, {"session": 9, "turn": 2},
     {"session": 4, "turn": 1}, {"turn": 3}, {"arrival_s": None}, {"arrival_s": 0.5},
     {"arrival_s": 2e9}, {"prompt_tokens": 0}, {"output_tokens": 0}, {"unit_tokens": 0},
     {"unit_tokens": True}, {"blocks": [1]}, {"blocks": [1, True]}, {"blocks": [1, 2.0]},
     {"blocks": [1, I64]}, {"blocks": "12"}, {"output_blocks": [False]},
     {"output_blocks": [-I64 - 1]}, {"output_blocks": None}, {"think_s": -1}, {"think_s": "x"},
     {"think_s": True}, {"unit_tokens": 512, "blocks": [1, 2]}, {"blocks": None}],
)  # fmt: skip
def test_bad_kvsim_rows_give_the_references_error(tmp_path, change):
    first = dict(GOOD_KVSIM, session=4, turn=0)
    rows = [first, dict(GOOD_KVSIM, **change), GOOD_KVSIM]
    p = tmp_path / "k.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, want = outcomes(p, "kvsim")
    assert got == want


# ---- CSV formats ---------------------------------------------------------------------------------

COLUMNS = {
    "azure": ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
    "burstgpt": ["Timestamp", "Model", "Request tokens", "Response tokens", "Log Type"],
    "vidur": ["arrived_at", "num_prefill_tokens", "num_decode_tokens", "pd_ratio"],
    "splitwise": ["request_id", "arrival_timestamp", "batch_size", "prompt_size", "token_size"],
}


def csv_cell(rng: random.Random, column: str, t: float) -> str:
    if column == "TIMESTAMP":
        stamp = datetime(2023, 11, 16, 18) + timedelta(seconds=t)
        return rng.choice([f"{stamp:%Y-%m-%d %H:%M:%S.%f}7", f" {stamp:%Y-%m-%dT%H:%M:%S.%f} "])
    if column in ("Timestamp", "arrived_at", "arrival_timestamp"):
        return rng.choice([f"{t}", f" {t} ", f"{t:e}", f"{int(t)}"]) if t == int(t) else f"{t}"
    if column == "batch_size":
        return "4096" if rng.random() < 0.002 else rng.choice(["1", "2", " 3 ", "+1"])
    if column in ("Model", "Log Type", "request_id", "pd_ratio"):
        return rng.choice(["x", '"a, b"', '"two\nlines"', "", "1.5"])
    zero = ["0"] if column in ("Request tokens", "Response tokens", "GeneratedTokens") else []
    return rng.choice(zero + ["1", "17", " 42 ", "+8", "1_000", "100000000", '"512"', "٣"])


@pytest.mark.parametrize("fmt", sorted(COLUMNS))
def test_csv_accepted_shapes_give_the_references_requests(tmp_path, fmt):
    rng = random.Random(fmt)
    columns = COLUMNS[fmt]
    lines, t = [",".join(columns)], 0.0
    for i in range(1500):
        t += rng.choice([0.0, 1.0, 2.5])
        lines.append(",".join(csv_cell(rng, c, t) for c in columns))
        if i % 101 == 0:
            lines.append("")  # a blank line: skipped
    p = tmp_path / "t.csv"
    p.write_text("\ufeff" + rng.choice(["\n", "\r\n"]).join(lines) + "\n")
    got, want = outcomes(p, fmt)
    assert want[1] is None and want[0].count("Request(") > 100
    assert got == want


@pytest.mark.parametrize(
    "fmt, header, row",
    [
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:17:04.0,10"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:17:04.0,10,1,9"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", '",120,7'),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-13-16 18:17:04.0,10,1"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:17:02.0,10,1"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:17:04.0,0,1"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens", '2023-11-16 18:17:04.0,"HUGE",1'),
        ("azure", "TIMESTAMP,ContextTokens", "2023-11-16 18:17:04.0,10"),
        ("azure", "ContextTokens,GeneratedTokens,TIMESTAMP,ContextTokens",
         "1,2,2023-11-16 18:17:04.0,3"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens", "-1,5,5"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens", "7,5,5.0"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens", "nan,5,5"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens", "7,0,0"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens,Response tokens", "7,1,2,3"),
        ("burstgpt", "Timestamp,Request tokens,Response tokens,Response tokens", "7,1"),
        ("vidur", "num_prefill_tokens,num_decode_tokens", "3,4"),
        ("vidur", "arrived_at,num_prefill_tokens", "3,4"),
        ("vidur", "arrived_at,num_prefill_tokens,num_decode_tokens", "inf,4,5"),
        ("vidur", "arrived_at,num_prefill_tokens,num_decode_tokens,note", '9,0,5,"a\nb"'),
        ("vidur", "arrived_at,num_prefill_tokens,num_decode_tokens,note", '9,1,5,"a\nb\n",x'),
        ("vidur", "arrived_at,num_prefill_tokens,num_decode_tokens", "2e9,4,5"),
        ("splitwise", "arrival_timestamp,prompt_size,token_size,batch_size", "9,4,5,0"),
        ("splitwise", "arrival_timestamp,prompt_size,token_size,batch_size", "9,4,5,4097"),
        ("splitwise", "arrival_timestamp,prompt_size,token_size,batch_size", "9,4,5, 3 "),
        ("splitwise", "arrival_timestamp,prompt_size,token_size", "9,4,5"),
    ],
)  # fmt: skip
def test_bad_csv_rows_give_the_references_error(tmp_path, fmt, header, row):
    """The row on line 4, after an accepted row and a blank line (or the header alone where the
    header is what is wrong)."""
    columns = header.split(",")
    first = ",".join({"TIMESTAMP": "2023-11-16 18:17:03.0"}.get(c, "3") for c in columns)
    p = tmp_path / "t.csv"
    row = row.replace("HUGE", "1" * 200_000)  # over csv's field size limit
    p.write_text(f"{header}\n{first}\n\n{row}\n{first.replace('3', '9', 1)}\n")
    got, want = outcomes(p, fmt)
    assert got == want
