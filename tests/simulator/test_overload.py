"""Overload is bounded and visible: a queue cap (arrivals to a full waiting queue are rejected)
and the queue lengths and KV use over time in ``timeseries.csv`` (the report draws them: see
test_report.py)."""

from __future__ import annotations

import csv
import io
import math

from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator import timeseries as ts

INTERVAL_S = 0.01  # the series' first interval


def _run(tmp_path, rows, **overrides):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, **overrides)
    return simulate(scenario_from_dict(doc, base_dir=tmp_path))


def _row(t, prompt=2000, output=50):
    return {"arrival_s": t, "prompt_tokens": prompt, "output_tokens": output}


def _status(res) -> list[str]:
    return [r["status"] for r in res.requests]


def test_arrivals_to_a_full_waiting_queue_are_rejected(tmp_path):
    """One sequence at a time, one waiting at most. r0 runs from 0 (a 2000-token prefill takes
    milliseconds), r1 waits behind it, r2 finds the queue full, r3 arrives when all is done."""
    rows = [_row(0.0), _row(0.001), _row(0.002), _row(100.0)]
    sched = {"max_num_batched_tokens": 4096, "max_num_seqs": 1}
    res = _run(tmp_path, rows, scheduler={**sched, "max_waiting": 1})
    assert _status(res) == ["done", "done", "dropped: rejected: queue full", "done"]
    assert res.summary["drop_reasons"] == {"rejected: queue full": 1}
    assert _status(_run(tmp_path, rows, scheduler=sched)) == ["done"] * 4


def test_simultaneous_arrivals_count_the_queue_before_admission(tmp_path):
    """At time 0 the first request is still waiting when the next two arrive (arrivals precede
    the replica's boundary at equal times): both find the queue of one full."""
    rows = [_row(0.0), _row(0.0), _row(0.0)]
    sched = {"max_num_batched_tokens": 4096, "max_num_seqs": 4, "max_waiting": 1}
    res = _run(tmp_path, rows, scheduler=sched)
    assert _status(res) == ["done"] + ["dropped: rejected: queue full"] * 2


def _series(res) -> list[tuple[float, int, int, int, int]]:
    rows = list(csv.reader(io.StringIO(res.timeseries.csv())))
    assert rows[0] == ["time_s", "replica", "waiting", "running", "kv_blocks_used"]
    return [(float(t), int(r), int(w), int(n), int(kv)) for t, r, w, n, kv in rows[1:]]


def test_queue_series_of_two_requests_by_hand(tmp_path):
    """One sequence at a time: r1 waits while r0 runs. A sample at s is the state after every
    event at or before s; samples stop before the last event (the last finish). r0 holds
    ⌈(500 + 8 − 1) / 16⌉ = 32 blocks all along (its last decode stays within its prompt's last
    block), then r1 ⌈(100 + 7) / 16⌉ = 7."""
    sched = {"max_num_batched_tokens": 4096, "max_num_seqs": 1}
    res = _run(tmp_path, [_row(0.0, 500, 8), _row(0.0, 100, 8)], scheduler=sched)
    f0, f1 = (res.requests[i]["finish_s"] for i in (0, 1))
    n = math.ceil(round(f1 * 1e9) / round(INTERVAL_S * 1e9))
    expected = [
        (round(k * INTERVAL_S, 9), 0, *((1, 1, 32) if k * INTERVAL_S < f0 else (0, 1, 7)))
        for k in range(n)
    ]
    got = _series(res)
    assert [(round(t, 9), *rest) for t, *rest in got] == expected
    assert expected[0][2] == 1 and expected[-1][2] == 0  # both phases are sampled


def test_kv_blocks_grow_by_a_block_as_decode_crosses_one(tmp_path):
    """A 15-token prompt with 120 tokens to generate: its KV covers 15 + j tokens once decode j
    has started, so the blocks held go 1, 2, … up to ⌈(15 + 119) / 16⌉ = 9, never down; the
    same series with every iteration stepped alone (the run's lazy allocations counted as
    started)."""
    fast = _run(tmp_path, [_row(0.0, 15, 120)])
    exact = _run(tmp_path, [_row(0.0, 15, 120)], simulation={"exact_steps": True})
    kv = [x[4] for x in _series(fast)]
    assert kv == sorted(kv) and kv[0] == 1 and kv[-1] == 9 and len(set(kv)) == 9
    assert fast.timeseries.csv() == exact.timeseries.csv()


def _loaded(tmp_path, **simulation):
    rows = [_row(0.02 * i, 300 + 97 * (i % 7), 5 + 13 * (i % 5)) for i in range(120)]
    return _run(
        tmp_path,
        rows,
        cluster={"replicas": 2},
        cache={"num_gpu_blocks": 150},
        scheduler={"max_num_batched_tokens": 1024, "max_num_seqs": 8},
        simulation=simulation,
    )


def test_fast_forward_and_exact_steps_give_the_same_series(tmp_path):
    fast = _loaded(tmp_path)
    exact = _loaded(tmp_path, exact_steps=True)
    assert fast.summary["preemptions"] > 0
    assert max(w for _, _, w, _, _ in _series(fast)) > 0
    assert fast.timeseries.csv() == exact.timeseries.csv()


def test_a_full_series_keeps_every_other_sample_and_doubles_its_interval(tmp_path, monkeypatch):
    full = _series(_loaded(tmp_path))
    monkeypatch.setattr(ts, "MAX_SAMPLES", 8)
    small = _loaded(tmp_path)
    kept = _series(small)
    interval = small.timeseries.interval_ns
    assert interval == ts.FIRST_INTERVAL_NS * 2 ** round(math.log2(interval / 1e7))
    assert 4 < small.timeseries.samples <= 8
    step = interval // ts.FIRST_INTERVAL_NS
    by_time = {(round(t, 9), r): (w, x, kv) for t, r, w, x, kv in full}
    assert len(full) // 2 >= (small.timeseries.samples - 1) * step + 1  # it was halved
    for t, r, w, x, kv in kept:
        assert by_time[round(t, 9), r] == (w, x, kv)
    assert [round(t / (interval / 1e9)) for t, r, *_ in kept if r == 0] == list(
        range(small.timeseries.samples)
    )


class _Replica:
    class scheduler:  # noqa: N801 - a stand-in with what the series reads
        waiting = ()
        num_running = 0

        class cache:  # noqa: N801
            capacity = 16


def test_memory_is_bounded_for_many_replicas():
    series = ts.QueueSeries([_Replica()] * 4096)
    assert series.max_samples == 84  # 2^20 values / (3 × 4096), even
    assert ts.QueueSeries([_Replica()] * 2).max_samples == ts.MAX_SAMPLES
