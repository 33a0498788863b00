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
