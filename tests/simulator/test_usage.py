"""What a planner reads in summary.json: utilisation (batch fill over time), saturated time,
iterations at the token budget, queueing delay, goodput and per-replica figures — by hand on
small runs, and the same whether decode iterations are fast-forwarded or stepped one by one."""

from __future__ import annotations

import pytest
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.usage import UsageMeter


def _run(tmp_path, rows, **overrides):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    return simulate(scenario_from_dict(scenario_doc(trace, **overrides), base_dir=tmp_path))


def _row(t, prompt, output):
    return {"arrival_s": t, "prompt_tokens": prompt, "output_tokens": output}


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def test_meter_by_hand():
    m = UsageMeter(max_tokens=100, max_seqs=4)
    m.start(tokens=100, seqs=2, waiting=False)  # at the budget: fill 1
    m.end(1, 10)
    m.start(tokens=3, seqs=3, waiting=False)  # three decodes: fill 3/4
    m.end(5, 40)
    m.start(tokens=30, seqs=1, waiting=True)  # a request left waiting: fill 1
    m.end(1, 20)
    assert m.utilisation(100) == (10 + 0.75 * 40 + 20) / 100
    assert (m.saturated_ns, m.at_budget) == (20, 1)
    assert m.utilisation(0) == 0.0


def test_one_request_fills_the_budget_then_a_quarter(tmp_path):
    """A 512-token prompt is one iteration at the token budget of 512 (fill 1); its decodes run
    one sequence of max_num_seqs 4 (fill 1/4) until it finishes, which ends the run."""
    sched = {"max_num_batched_tokens": 512, "max_num_seqs": 4}
    res = _run(tmp_path, [_row(0.0, 512, 20)], scheduler=sched)
    r, s = res.requests[0], res.summary
    first, end = _ns(r["first_token_s"]), _ns(r["finish_s"])
    assert s["utilisation"] == (4 * first + (end - first)) / (4 * end)
    assert s["busy_fraction"] == 1.0
    assert s["saturated_fraction"] == 0.0
    assert s["iterations_at_token_budget"] == 1 / s["iterations"]
    assert s["iterations"] == 20  # the prefill samples the first token; 19 decodes
    assert r["queue_s"] == 0.0 and s["queue_s"]["p99"] == 0.0


def test_a_waiting_request_saturates_and_queues(tmp_path):
    """One sequence at a time: r1 waits while r0 runs, so every batch is full (one sequence of
    one) and the time until r0 finishes is saturated; r1 queues exactly that long."""
    sched = {"max_num_batched_tokens": 4096, "max_num_seqs": 1}
    res = _run(tmp_path, [_row(0.0, 500, 8), _row(0.0, 100, 8)], scheduler=sched)
    r0, r1 = res.requests
    s = res.summary
    f0, f1 = _ns(r0["finish_s"]), _ns(r1["finish_s"])
    assert (s["utilisation"], s["busy_fraction"]) == (1.0, 1.0)
    assert s["saturated_fraction"] == f0 / f1
    assert (r0["queue_s"], _ns(r1["queue_s"])) == (0.0, f0)
    assert s["queue_s"]["mean"] == f0 / 2 / 1e9
    assert s["queue_s"]["p50"] == pytest.approx(f0 / 2 / 1e9, abs=1e-15)


def test_idle_time_counts_zero(tmp_path):
    """Two requests far apart: the replica idles in between; utilisation and busy time are the
    two requests' own shares of the span."""
    sched = {"max_num_batched_tokens": 512, "max_num_seqs": 1}  # every batch is full
    res = _run(tmp_path, [_row(0.0, 200, 4), _row(10.0, 200, 4)], scheduler=sched)
    r0, r1 = res.requests
    busy = _ns(r0["e2e_s"]) + _ns(r1["e2e_s"])
    span = _ns(r1["finish_s"])
    assert res.summary["utilisation"] == busy / span
    assert res.summary["busy_fraction"] == busy / span


def test_goodput_is_requests_meeting_both_slos_per_second(tmp_path):
    """Of two requests, the one that queued behind the other misses a TTFT SLO set between
    their TTFTs."""
    sched = {"max_num_batched_tokens": 4096, "max_num_seqs": 1}
    rows = [_row(0.0, 500, 8), _row(0.0, 100, 8)]
    probe = _run(tmp_path, rows, scheduler=sched)
    t0, t1 = (r["ttft_s"] for r in probe.requests)
    res = _run(tmp_path, rows, scheduler=sched, slo={"ttft_s": (t0 + t1) / 2, "tpot_s": 10.0})
    s = res.summary
    assert s["slo"]["attainment"] == 0.5
    assert s["slo"]["goodput_requests_per_s"] == 1 / s["duration_s"]


def test_per_replica_figures(tmp_path):
    rows = [_row(0.01 * i, 300 + 50 * (i % 3), 10) for i in range(30)]
    res = _run(tmp_path, rows, cluster={"replicas": 3}, routing="round_robin",
               cache={"num_gpu_blocks": 500})  # fmt: skip
    s = res.summary
    per = s["replicas"]
    assert [p["replica"] for p in per] == [0, 1, 2]
    assert [p["requests"] for p in per] == [10, 10, 10]  # round robin
    assert [p["routed"] for p in per] == [10, 10, 10]
    replica = [r["replica"] for r in res.requests]
    assert [replica.count(i) for i in range(3)] == [10, 10, 10]
    assert sum(p["iterations"] for p in per) == s["iterations"]
    assert all(p["kv_blocks"] == 500 for p in per)
    assert s["utilisation"] == sum(p["utilisation"] for p in per) / 3
    assert s["kv_use"]["peak"] == max(p["kv_use_peak"] for p in per)
    # KV use from the sampled series: the mean and peak of each replica's column over capacity.
    v = res.timeseries.per_replica()
    for i, p in enumerate(per):
        assert p["kv_use_mean"] == float(v[:, i, 2].mean()) / 500
        assert p["kv_use_peak"] == float(v[:, i, 2].max()) / 500
    assert 0 < s["kv_use"]["mean"] <= s["kv_use"]["peak"] <= 1


def test_fast_forward_and_exact_steps_give_the_same_summary(tmp_path):
    rows = [_row(0.02 * i, 300 + 97 * (i % 7), 5 + 13 * (i % 5)) for i in range(120)]
    over = dict(cluster={"replicas": 2}, cache={"num_gpu_blocks": 150},
                scheduler={"max_num_batched_tokens": 1024, "max_num_seqs": 8})  # fmt: skip
    fast = _run(tmp_path, rows, **over)
    exact = _run(tmp_path, rows, **over, simulation={"exact_steps": True})
    assert fast.summary["preemptions"] > 0 and fast.summary["saturated_fraction"] > 0
    assert fast.summary == exact.summary
