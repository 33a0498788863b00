"""requests.csv's numpy fast path against the rows formatted one by one in Python: random records
of every shape (dropped rows, sessions, jobs, hand-offs, the CPU tier), times up to the exactness
limit, TPOT cells on rounding ties, and the chunks the fast path hands back (a time at or beyond
2^23 s, a negative count). Each case asserts the fast path ran where it should, so the comparison
is never the exact path against itself."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from kvsim.simulator import requests_csv as rc
from kvsim.simulator.metrics import BASE_FIELDS, NS, Results
from kvsim.simulator.recorder import FIELDS

F = {name: i for i, name in enumerate(FIELDS)}
REASONS = ["rejected: queue full", "too long: 9000 > 8192"]


def _records(rng, n: int, full: bool, top_ns: int = 10**13) -> np.ndarray:
    """``n`` random records: about a fifth dropped, optional fields absent (-1) at random."""
    raw = np.zeros((n, len(FIELDS) if full else BASE_FIELDS), np.int64)
    arr = rng.integers(0, top_ns // 2, n)
    first = arr + rng.integers(0, top_ns // 4, n)
    raw[:, F["id"]] = rng.permutation(n) + rng.integers(0, 10**6)
    raw[:, F["arrival_ns"]] = arr
    raw[:, F["first_ns"]] = first
    raw[:, F["finish_ns"]] = first + rng.integers(0, top_ns // 4, n)
    for name, hi in (("prompt_tokens", 200_000), ("hit_tokens", 10**5),
                     ("hit_units", 400), ("units", 400), ("recomputed", 5000),
                     ("preemptions", 12), ("replica", 300), ("turn", 40)):  # fmt: skip
        raw[:, F[name]] = rng.integers(0, hi, n)
    raw[:, F["output_tokens"]] = rng.choice([1, 2, 3, 7, 256, 4000], n)
    raw[:, F["status"]] = np.where(rng.random(n) < 0.2, rng.integers(0, len(REASONS), n), -1)

    def sometimes(v):
        return np.where(rng.random(n) < 0.5, v, -1)

    raw[:, F["session"]] = sometimes(rng.integers(0, 10**7, n))
    raw[:, F["job_ns"]] = sometimes(rng.integers(0, top_ns, n))
    raw[:, F["queue_ns"]] = sometimes(rng.integers(0, 10**9, n))
    if full:
        for name, hi in (("prefill_replica", 64), ("decode_replica", 64),
                         ("payload_bytes", 10**12), ("wait_ns", 10**10), ("transfer_ns", 10**9),
                         ("producer_codec_ns", 10**7), ("consumer_codec_ns", 10**7),
                         ("handoff_ns", top_ns)):  # fmt: skip
            raw[:, F[name]] = sometimes(rng.integers(0, hi, n))
        raw[:, F["cpu_hit_units"]] = rng.integers(0, 400, n)
    return raw


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("top_ns", [10**4, 10**13, rc.EXACT_LIMIT_NS])
def test_the_fast_path_writes_the_exact_rows(rng, full, top_ns):
    raw = _records(rng, 3000, full, top_ns)
    want = rc.exact_rows(raw, full, full, REASONS)
    assert rc._fast_rows(raw, full, full, REASONS) == want  # raises if it handed the chunk back
    assert rc.rows(raw, full, full, REASONS) == want
    assert want.count("\n") == 3000 and "dropped: rejected: queue full" in want


def test_times_just_below_the_limit_are_exact(rng):
    raw = _records(rng, 2000, False)
    top = rc.EXACT_LIMIT_NS
    for name in ("arrival_ns", "first_ns", "finish_ns"):
        raw[:, F[name]] = top - 1 - rng.integers(0, 10**15, 2000)
    raw[:, F["first_ns"]] = np.maximum(raw[:, F["first_ns"]], raw[:, F["arrival_ns"]])
    raw[:, F["finish_ns"]] = np.maximum(raw[:, F["finish_ns"]], raw[:, F["first_ns"]])
    raw[0, F["arrival_ns"]] = raw[0, F["first_ns"]] = raw[0, F["finish_ns"]] = top - 1
    got = rc._fast_rows(raw, False, False, REASONS)
    assert got == rc.exact_rows(raw, False, False, REASONS)
    assert f"{(top - 1) // 10**9}.999999999" in got


def test_tpot_on_rounding_ties_is_python_s(rng):
    # d/k within a hair of a half-integer of ns: the two float divisions decide which way .9f
    # rounds, so the integer rounding alone would be wrong on some of these rows.
    k = rng.integers(2, 5000, 4000)
    q = rng.integers(0, 10**13, 4000) // k
    d = q * k + k // 2 + rng.integers(-1, 2, 4000) * (k % 2 == 0)
    raw = _records(rng, 4000, False)
    raw[:, F["status"]] = -1
    raw[:, F["output_tokens"]] = k + 1
    raw[:, F["first_ns"]] = raw[:, F["arrival_ns"]]
    raw[:, F["finish_ns"]] = raw[:, F["first_ns"]] + d
    pairs = list(zip(d.tolist(), k.tolist(), strict=True))
    naive = [f"{(dd + kk // 2) // kk / 1e9:.9f}" for dd, kk in pairs]  # d/k, halves up
    exact = [f"{dd / NS / kk:.9f}" for dd, kk in pairs]
    assert naive != exact  # ties exist here that naive rounding gets wrong
    got = rc._fast_rows(raw, False, False, REASONS)
    assert got == rc.exact_rows(raw, False, False, REASONS)
    assert [line.split(",")[5] for line in got.splitlines()] == exact


@pytest.mark.parametrize(
    "field, value",
    [("arrival_ns", rc.EXACT_LIMIT_NS), ("job_ns", rc.EXACT_LIMIT_NS + 7),
     ("prompt_tokens", -3), ("turn", -1), ("replica", -1)],
)  # fmt: skip
def test_a_chunk_the_fast_path_cannot_write_exactly_is_written_row_by_row(rng, field, value):
    raw = _records(rng, 500, False)
    raw[:, F["status"]] = -1  # a finished row's replica is written, -1 included
    raw[123, F[field]] = value
    if field == "arrival_ns":  # a consistent row: the first token and the finish at its arrival
        raw[123, F["first_ns"]] = raw[123, F["finish_ns"]] = value
    with pytest.raises(rc._NotExact):
        rc._fast_rows(raw, False, False, REASONS)
    got = rc.rows(raw, False, False, REASONS)
    assert got == rc.exact_rows(raw, False, False, REASONS)
    assert got.count("\n") == 500


class _Sink(io.BytesIO):
    def flush(self):
        pass


def _results_over(raw, full: bool) -> Results:
    """A Results reading ``raw`` records from an in-memory record file left at its end."""
    res = object.__new__(Results)
    res._sink = _Sink(raw.tobytes())
    res._sink.seek(0, io.SEEK_END)
    res._record = struct.Struct(f"<{raw.shape[1]}q")
    res._handoff = res._cpu_tier = full
    res._reasons = REASONS
    return res


def test_a_run_s_requests_csv_is_written_in_chunks(rng, monkeypatch):
    raw = _records(rng, 1000, True)
    raw[700, F["arrival_ns"]] = rc.EXACT_LIMIT_NS  # one chunk is handed back
    monkeypatch.setattr(rc, "CHUNK_ROWS", 64)
    res = _results_over(raw, True)
    header, body = res.requests_csv().split("\n", 1)
    assert header.split(",") == list(res.column_names)
    assert body == rc.exact_rows(raw, True, True, REASONS)
    assert res._sink.tell() == raw.nbytes  # left at its end for more records


def test_the_record_file_is_left_at_its_end_when_a_write_fails(rng, monkeypatch):
    class Full(io.StringIO):
        def write(self, text):
            if self.tell() > 0:
                raise OSError(28, "No space left on device")
            return super().write(text)

    raw = _records(rng, 300, False)
    monkeypatch.setattr(rc, "CHUNK_ROWS", 64)
    res = _results_over(raw, False)
    with pytest.raises(OSError, match="No space left"):
        res.write_requests_csv(Full())
    assert res._sink.tell() == raw.nbytes  # more records would still be appended at the end
