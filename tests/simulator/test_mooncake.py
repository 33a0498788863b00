"""End-to-end checks on the real Mooncake conversation trace (from ../shared/traces)."""

from __future__ import annotations

import json

import pytest
from helpers import scenario_doc, shared_trace

from kvsim.simulator import scenario_from_dict, simulate


def _own_hit_ratio(trace, block_size: int) -> float:
    """The trace's own prefix-hit ratio: units whose (id, length) was seen before, counting only
    units with at least one full KV block (a cache of full blocks cannot hold a shorter one)."""
    seen, units, hits = set(), 0, 0
    for line in trace.read_text().splitlines():
        row = json.loads(line)
        for u, i in enumerate(row["hash_ids"]):
            length = min(512, row["input_length"] - 512 * u)
            units += 1
            hits += (i, length) in seen and length >= block_size
            seen.add((i, length))
    return hits / units


def test_unlimited_cache_hits_equal_the_traces_own_prefix_hit_ratio(tmp_path):
    """Served one at a time with a cache that never evicts, every unit seen before is a hit, so
    the simulated prefix-hit ratio is the trace's own (36.6%): 105,710 repeats of 288,500 units,
    one of which is shorter than a block and so never cached (vLLM caches full blocks only)."""
    trace = shared_trace("mooncake_conversation.jsonl")
    assert _own_hit_ratio(trace, 1) == pytest.approx(105_710 / 288_500, abs=1e-15)
    doc = scenario_doc(
        trace,
        fmt="mooncake",
        cache={"num_gpu_blocks": 50_000_000},
        scheduler={"max_num_batched_tokens": 16384, "max_num_seqs": 1},
    )
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert res.summary["finished"] == 12031
    assert res.summary["prefix_hit_ratio"] == _own_hit_ratio(trace, 16) == 105_709 / 288_500
    assert res.summary["preemptions"] == 0 and res.summary["evictions"] == 0


def test_fast_forward_equals_exact_steps_under_pressure(tmp_path):
    """A loaded slice of the trace on a small pool: preemptions, evictions and fast-forward runs
    cut by arrivals all happen, and the two modes still agree byte for byte."""
    trace = shared_trace("mooncake_conversation.jsonl")
    over = dict(
        fmt="mooncake",
        cluster={"replicas": 2},
        cache={"num_gpu_blocks": 6000},
        scheduler={"max_num_batched_tokens": 4096, "max_num_seqs": 64},
        routing="prefix_aware",
        workload={
            "type": "trace",
            "path": str(trace),
            "format": "mooncake",
            "max_requests": 600,
            "rate_scale": 4.0,
        },
    )
    fast = simulate(scenario_from_dict(scenario_doc(trace, **over), base_dir=tmp_path))
    exact_doc = scenario_doc(trace, simulation={"exact_steps": True}, **over)
    exact = simulate(scenario_from_dict(exact_doc, base_dir=tmp_path))
    assert fast.summary["preemptions"] > 0
    assert fast.summary["evictions"] > 0
    assert fast.summary["iterations"] == exact.summary["iterations"]
    assert fast.summary["busy_fraction"] == exact.summary["busy_fraction"]
    assert fast.requests_csv() == exact.requests_csv()
