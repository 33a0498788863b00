"""Summary statistics: exact percentiles selected from the streamed request records."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.simulator import metrics
from kvsim.simulator.metrics import NS, Recorder, Results
from kvsim.simulator.recorder import RequestRecord
from kvsim.simulator.scheduler import Seq


def _record(
    rec: Recorder, rid: int, arrival: int, first: int, finish: int, out: int, job: int = -1
) -> None:
    req = SimpleNamespace(id=rid, output_tokens=out, prompt_tokens=10, lengths_estimated=False,
                          blocks=(), session=None if job < 0 else rid, turn=0)  # fmt: skip
    seq = Seq(req, arrival, RequestRecord(arrival))
    seq.first_ns, seq.admitted_ns = first, arrival + (first - arrival) // 3
    rec.finished(seq, 0, finish, job)


def _expected(ttft, tpot, e2e, jobs=(), queue=()) -> dict:
    out = {}
    for name, vals in (("ttft_s", ttft), ("tpot_s", tpot), ("e2e_s", e2e), ("job_latency_s", jobs),
                       ("queue_s", queue)):  # fmt: skip
        if not vals:
            continue
        a = np.array(vals, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        out[name] = {"mean": float(a.mean()), "p50": p50, "p90": p90, "p99": p99}
    return out


rows = st.lists(
    st.tuples(
        st.integers(0, 10**9),  # arrival
        st.sampled_from([0, 1, 7, 10**6, 10**6, 3 * 10**9]),  # TTFT: ties are common
        st.integers(0, 5 * 10**9),  # decode time
        st.integers(1, 300),  # output tokens
        st.one_of(st.just(-1), st.integers(0, 10**11)),  # ends a session of this latency (ns)
    ),
    min_size=1,
    max_size=300,
)


@pytest.mark.parametrize("bins, collect", [(4096, 1 << 16), (4, 3), (2, 1)])
@settings(max_examples=40, deadline=None)
@given(rows=rows)
def test_percentiles_equal_numpy_on_all_values(rows, bins, collect):
    """Streaming selection returns numpy's percentiles bit for bit, also when tiny bin and
    gather limits force many narrowing passes (ties, one value, TPOT undefined for some)."""
    old = metrics._BINS, metrics._COLLECT
    metrics._BINS, metrics._COLLECT = bins, collect
    try:
        rec = Recorder(1.0, 0.1)
        ttft, tpot, e2e, jobs, queue = [], [], [], [], []
        for i, (arr, t, d, out, job) in enumerate(rows):
            _record(rec, i, arr, arr + t, arr + t + d, out, job)
            if job >= 0:
                jobs.append(job / NS)
            ttft.append(t / NS)
            queue.append((t // 3) / NS)  # admitted a third of the way to the first token
            e2e.append((t + d) / NS)
            if out > 1:
                tpot.append(d / NS / (out - 1))
        got = Results(rec, {}).summary
    finally:
        metrics._BINS, metrics._COLLECT = old
    want = _expected(ttft, tpot or [math.nan], e2e, jobs, queue)
    assert got["jobs"] == len(jobs)
    metric_names = ("ttft_s", "e2e_s", "queue_s") + (("tpot_s",) if tpot else ())
    for m in metric_names + (("job_latency_s",) if jobs else ()):
        for k in ("p50", "p90", "p99"):
            assert got[m][k] == want[m][k], (m, k)
        assert got[m]["mean"] == pytest.approx(want[m]["mean"], rel=1e-12)
    if not tpot:
        assert math.isnan(got["tpot_s"]["p50"])


def test_no_finished_requests_gives_nan():
    s = Results(Recorder(1.0, 0.1), {}).summary
    assert all(math.isnan(s[m]["p99"]) for m in ("ttft_s", "tpot_s", "e2e_s"))


def test_warmup_requests_are_simulated_but_not_recorded(tmp_path):
    """The first N requests (by id) only warm the cache: the other rows are exactly those of the
    run without warm-up, and the summary covers them only; a warm-up that leaves nothing to
    measure is a one-line error."""
    from helpers import scenario_doc, write_kvsim_trace

    from kvsim.simulator import scenario_from_dict, simulate
    from kvsim.simulator.errors import KvsimError

    rows = [{"arrival_s": 0.01 * i, "prompt_tokens": 300, "output_tokens": 20,
             "blocks": [1 if i % 2 else 0, 2 + i % 2, 100 + i, 200 + i, 300 + i],
             "unit_tokens": 64}
            for i in range(12)]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    full = simulate(scenario_from_dict(scenario_doc(trace), base_dir=tmp_path))
    doc = scenario_doc(trace, simulation={"warmup_requests": 5})
    warm = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert [r for r in full.requests if int(r["id"]) >= 5] == warm.requests
    s = warm.summary
    assert (s["warmup_requests"], s["requests"], s["finished"]) == (5, 7, 7)
    ttft = [float(r["ttft_s"]) for r in warm.requests]
    assert s["ttft_s"]["mean"] == pytest.approx(sum(ttft) / 7, rel=1e-9)
    assert s["token_hit_ratio"] == sum(int(r["hit_tokens"]) for r in warm.requests) / (7 * 300)
    hits = sum(int(r["hit_units"]) > 0 for r in warm.requests)
    assert s["request_hit_ratio"] == hits / 7 and hits == 7  # both prompts' prefixes warmed up
    assert full.summary["request_hit_ratio"] == 10 / 12  # unwarmed, the first of each misses
    assert "warmup_requests" not in full.summary
    with pytest.raises(KvsimError, match=r"simulation.warmup_requests: 12 leaves none of the "
                                         r"workload's 12 requests"):  # fmt: skip
        scenario_from_dict(scenario_doc(trace, simulation={"warmup_requests": 12}),
                           base_dir=tmp_path)  # fmt: skip


def test_requests_are_numbers_and_columns_are_arrays_of_the_csv(tmp_path):
    """`requests` gives requests.csv's values as numbers (None where empty) and `columns()` the
    same table as numpy arrays (−1 / NaN where empty), both ordered by id — checked against the
    CSV text read here with the csv module: a two-turn session, a one-token answer (no TPOT) and
    a prompt too long for the pool (dropped)."""
    import csv
    import io

    from helpers import scenario_doc, write_kvsim_trace

    from kvsim.simulator import scenario_from_dict, simulate

    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 200, "output_tokens": 30, "session": 7, "turn": 0},
        {"prompt_tokens": 260, "output_tokens": 1, "session": 7, "turn": 1, "think_s": 0.5},
        {"arrival_s": 0.01, "prompt_tokens": 90, "output_tokens": 12},
        {"arrival_s": 0.02, "prompt_tokens": 9000, "output_tokens": 5},
    ]
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, cache={"num_gpu_blocks": 100})
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    text = list(csv.DictReader(io.StringIO(res.requests_csv())))
    by_id = sorted(text, key=lambda r: int(r["id"]))
    ints = {"id", "prompt_tokens", "output_tokens", "hit_tokens", "hit_units", "units",
            "recomputed_tokens", "preemptions", "replica", "session", "turn"}  # fmt: skip
    expected = [
        {k: v if k == "status" else None if v == "" else int(v) if k in ints else float(v)
         for k, v in r.items()}
        for r in by_id
    ]  # fmt: skip
    got = res.requests
    assert got == expected
    assert [type(got[0][k]) for k in ("id", "arrival_s", "status")] == [int, float, str]
    assert got[1]["tpot_s"] is None and got[3]["replica"] is None and got[2]["session"] is None
    assert got[3]["status"].startswith("dropped: needs more KV blocks")
    assert got[0]["job_latency_s"] is None and got[1]["job_latency_s"] > 0
    cols = res.columns()
    assert list(cols) == list(text[0])
    for name, array in cols.items():
        want = [r[name] for r in expected]
        if name == "status":
            assert array.tolist() == want
        elif name in ints:
            assert array.dtype == np.int64 and array.tolist() == [-1 if v is None else v
                                                                  for v in want]  # fmt: skip
        else:
            assert array.dtype == np.float64
            assert np.isnan(array).tolist() == [v is None for v in want], name
            exact = [v for v in want if v is not None]
            if name == "tpot_s":  # requests.csv rounds it to the nanosecond
                assert array[~np.isnan(array)] == pytest.approx(exact, abs=5e-10)
            else:
                assert array[~np.isnan(array)].tolist() == exact, name
    assert list(res.columns(["ttft_s", "id"])) == ["ttft_s", "id"]
    with pytest.raises(KeyError, match="no column 'ttft'"):
        res.columns(["ttft"])
