"""Summary statistics: exact percentiles selected from the streamed request records."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.simulator import metrics
from kvsim.simulator.metrics import NS, Recorder, RequestRecord, Results


def _record(
    rec: Recorder, rid: int, arrival: int, first: int, finish: int, out: int, job: int = -1
) -> None:
    req = SimpleNamespace(id=rid, output_tokens=out, prompt_tokens=10, blocks=(),
                          session=None if job < 0 else rid, turn=0)  # fmt: skip
    seq = SimpleNamespace(
        req=req, rec=RequestRecord(arrival), first_ns=first, hit_tokens=0, hit_units=0,
        cpu_hit_units=0, preemptions=0, recomputed=0,
    )  # fmt: skip
    rec.finished(seq, 0, finish, job)


def _expected(ttft, tpot, e2e, jobs=()) -> dict:
    out = {}
    for name, vals in (("ttft_s", ttft), ("tpot_s", tpot), ("e2e_s", e2e), ("job_latency_s", jobs)):
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
        ttft, tpot, e2e, jobs = [], [], [], []
        for i, (arr, t, d, out, job) in enumerate(rows):
            _record(rec, i, arr, arr + t, arr + t + d, out, job)
            if job >= 0:
                jobs.append(job / NS)
            ttft.append(t / NS)
            e2e.append((t + d) / NS)
            if out > 1:
                tpot.append(d / NS / (out - 1))
        got = Results(rec, {}).summary
    finally:
        metrics._BINS, metrics._COLLECT = old
    want = _expected(ttft, tpot or [math.nan], e2e, jobs)
    assert got["jobs"] == len(jobs)
    metric_names = ("ttft_s", "e2e_s") + (("tpot_s",) if tpot else ())
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
