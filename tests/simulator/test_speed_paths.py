"""Fast paths of the iteration price (issue 17) against the op-building path they replace: the
roofline's attention priced without an Attention object must give the same float, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import scenario_doc, write_kvsim_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.catalog import get_gpu, get_model, with_kv_cache_dtype
from kvsim.simulator.cluster import Cluster
from kvsim.simulator.latency import IterationPricer, RooflineModel
from kvsim.simulator.latency.ops import attention_op
from kvsim.traces import Request

CASES = [
    ("llama-3.1-8b", 1, "h100-sxm", "auto"),
    ("llama-3.1-70b", 4, "h200", "auto"),
    ("llama-3.1-70b", 2, "a100-80g", "fp8"),
    ("qwen2.5-7b", 2, "h20", "auto"),
    ("nemotron-h-8b", 1, "h100-sxm", "auto"),
]


@pytest.mark.parametrize("name,tp,gpu,kv_dtype", CASES)
@settings(max_examples=60, deadline=None)
@given(
    q=st.integers(1, 16_384),
    kv=st.integers(0, 4_000_000),
    pairs=st.integers(0, 10**10),
    seqs=st.integers(1, 512),
    segments=st.integers(1, 4096),
)
def test_attention_without_op_equals_op_price(
    name, tp, gpu, kv_dtype, q, kv, pairs, seqs, segments
):
    model = with_kv_cache_dtype(get_model(name), kv_dtype)
    roofline = RooflineModel(get_gpu(gpu))
    pricer = IterationPricer(model, tp, roofline)
    assert pricer._attention_fast is not None
    op = attention_op(model, tp, q, kv, pairs, seqs, segments)
    want = model.attention_layers * roofline.price(op)
    assert pricer.attention_s(q, kv, pairs, seqs, segments) == want
    # Twice: the second call reads the memoized KV read rate.
    assert pricer.attention_s(q, kv, pairs, seqs, segments) == want


def test_a_subclass_pricing_attention_otherwise_keeps_the_op_path():
    class Slower(RooflineModel):
        def _attention(self, op):
            return 2 * super()._attention(op)

    model = get_model("llama-3.1-8b")
    slower = Slower(get_gpu("h100-sxm"))
    pricer = IterationPricer(model, 1, slower)
    assert pricer._attention_fast is None
    op = attention_op(model, 1, 300, 5000, 800_000, 7, 7)
    assert pricer.attention_s(300, 5000, 800_000, 7, 7) == 32 * slower.price(op)


def test_help_imports_no_heavy_module():
    # A fresh interpreter: what building the CLI's parser (all of `kvsim --help`) imports.
    code = (
        "import sys\n"
        "from kvsim.simulator.cli import _parser\n"
        "_parser().format_help()\n"
        "print(','.join(m for m in ('numpy', 'pydantic', 'simpy', 'plotly',"
        " 'kvsim.simulator.cluster', 'kvsim.simulator.latency') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_package_names_resolve():
    import kvsim.simulator as sim
    import kvsim.traces as traces
    from kvsim.simulator.cluster import simulate
    from kvsim.simulator.latency.profile import MAX_HELDOUT_MAPE
    from kvsim.simulator.scenario import load_scenario
    from kvsim.traces.stats import trace_stats

    assert sim.simulate is simulate and sim.load_scenario is load_scenario
    assert traces.trace_stats is trace_stats
    assert MAX_HELDOUT_MAPE == 0.10
    assert {"simulate", "Scenario", "KvsimError"} <= set(dir(sim))
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        sim.simulat  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        traces.nope  # noqa: B018


def _evicted_prefix_run(tmp_path, exact: bool):
    """Two prefix-aware replicas of 40 blocks. A (t=0) leaves prefix units 1, 2 (and its unit 3)
    cached on replica 0 and finishes; B (t=0.5) decodes 560 tokens there, its run evicting those
    units (39 of the 40 blocks by its end); C (t=4, prefix 1, 2) arrives while B still runs."""
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 192, "output_tokens": 1, "blocks": [1, 2, 3]},
        {"arrival_s": 0.5, "prompt_tokens": 64, "output_tokens": 560, "blocks": [50]},
        {"arrival_s": 4.0, "prompt_tokens": 192, "output_tokens": 4, "blocks": [1, 2, 7]},
    ]
    for r in rows:
        r["unit_tokens"] = 64
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(
        trace,
        cluster={"replicas": 2, "tensor_parallel": 1},
        cache={"block_size": 16, "num_gpu_blocks": 40},
        scheduler={"max_num_batched_tokens": 512, "max_num_seqs": 8},
        routing="prefix_aware",
        simulation={"exact_steps": exact},
    )
    return simulate(scenario_from_dict(doc, base_dir=tmp_path))


def test_prefix_routing_syncs_the_replica_holding_the_prefix(tmp_path):
    # By t=4 B's iterations have evicted the prefix on replica 0: C sees nothing cached there,
    # and replica 1 (idle, same uncached work) wins. Exact stepping allocates each iteration at
    # its own boundary; the fast-forwarded run must be brought up to date before C is routed
    # (replica 0 may hold C's first unit), though replica 1 (which cannot) is not.
    fast = _evicted_prefix_run(tmp_path, exact=False)
    exact = _evicted_prefix_run(tmp_path, exact=True)
    assert [r["replica"] for r in exact.requests] == [0, 0, 1]
    assert fast.requests == exact.requests
    assert fast.summary["evictions"] == exact.summary["evictions"] == 3


@pytest.mark.parametrize("disaggregated", [False, True])
def test_fused_prefix_routing_picks_what_the_policy_ranks(tmp_path, monkeypatch, disaggregated):
    """``replica.least_prefill_work`` (prefix_aware with its syncs, compiled) against the policy's
    own key through ``choose`` with ``Pool.sync_for``: the same replica for every request, over
    shared prefixes, queues, evictions and ties (several idle replicas: the lowest index)."""
    from kvsim.simulator.pool import Pool

    rows, t = [], 0.0
    for i in range(160):
        t += 0.004 * (i % 7)
        doc_units = [1000 * (i % 5) + u for u in range(i % 4 + 1)]  # 5 shared prefixes
        own = [100_000 + i * 10 + u for u in range(i % 3)]
        units = doc_units + own
        rows.append(
            {
                "arrival_s": round(t, 6),
                "prompt_tokens": 64 * len(units) - (i % 2) * 7,
                "output_tokens": 1 + (i * 13) % 40,
                "blocks": units,
                "unit_tokens": 64,
            }
        )
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    over = {"cache": {"block_size": 16, "num_gpu_blocks": 60}, "routing": "prefix_aware"}
    if not disaggregated:
        over["cluster"] = {"replicas": 4, "tensor_parallel": 1}
    else:
        over["pools"] = [
            {"name": "prefill", "role": "prefill", "replicas": 3, "routing": "prefix_aware"},
            {"name": "decode", "role": "decode", "replicas": 2, "routing": "prefix_aware"},
        ]
        over["links"] = [
            {"name": "pd", "producer": "prefill", "consumer": "decode", "bandwidth_gbit_per_s": 50}
        ]
    doc = scenario_doc(
        trace,
        scheduler={"max_num_batched_tokens": 256, "max_num_seqs": 8},
        **over,
    )
    if disaggregated:
        del doc["cluster"]
    runs = {}
    for fused in (True, False):
        monkeypatch.setattr(Pool, "FUSED_ROUTING", fused)
        runs[fused] = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert runs[True].requests_csv() == runs[False].requests_csv()
    # where each request was routed (one that ends at its first token never leaves its
    # prefill replica: no hand-off, `replica` is that one)
    requests = runs[True].requests
    replicas = [r["replica"] if r.get("prefill_replica") is None else r["prefill_replica"]
                for r in requests]  # fmt: skip
    assert replicas[0] == 0 and len(set(replicas)) == 3 + (not disaggregated)  # ties and spread
    if disaggregated:
        assert {r["decode_replica"] for r in requests} == {None, 0, 1}
    assert runs[True].summary["prefix_hit_ratio"] > 0


@pytest.mark.parametrize(
    "routing,fused", [("prefix_aware", True), ("least_loaded", False), ("round_robin", False)]
)
def test_only_prefix_aware_routing_runs_fused(tmp_path, routing, fused):
    from kvsim.simulator.cluster import Cluster

    rows = [{"arrival_s": 0.0, "prompt_tokens": 64, "output_tokens": 1, "blocks": [1]}]
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, cluster={"replicas": 2, "tensor_parallel": 1}, routing=routing)
    cluster = Cluster(scenario_from_dict(doc, base_dir=tmp_path))
    assert cluster.entry.fused_routing is fused


def _decoding_replica(tmp_path, blocks: int):
    """Replica 0 of two (prefix-aware, ``blocks`` KV blocks each) at t=3 s: A (t=0) left its
    prompt's units 1, 2 cached there and finished; B (t=0.5) is in a fast-forwarded run of its
    560-token decode."""
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 128, "output_tokens": 1, "blocks": [1, 2]},
        {"arrival_s": 0.5, "prompt_tokens": 64, "output_tokens": 560, "blocks": [50]},
    ]
    for row in rows:
        row["unit_tokens"] = 64
    doc = scenario_doc(
        write_kvsim_trace(tmp_path / "t.jsonl", rows),
        cluster={"replicas": 2, "tensor_parallel": 1},
        cache={"block_size": 16, "num_gpu_blocks": blocks},
        scheduler={"max_num_batched_tokens": 512, "max_num_seqs": 8},
        routing="prefix_aware",
    )
    c = Cluster(scenario_from_dict(doc, base_dir=tmp_path))
    c._next_arrival()
    c.env.run(until=3 * 10**9)
    r = c.replicas[0]
    assert r._run is not None and r._run.k > 1
    return c, r


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("blocks, synced", [(400, False), (40, True)])
def test_routing_syncs_a_run_only_where_its_pending_blocks_could_evict(
    tmp_path, blocks, synced, fused
):
    """A request sharing A's prefix is routed at t=3 s. With 400 blocks B's pending decode blocks
    fit in the free ones: nothing can be evicted, so the run's allocations stay pending (the
    prefix reads the same). With 40 they do not (B's run evicts A's units): synced. Fused and
    through the policy alike."""
    c, r = _decoding_replica(tmp_path, blocks)
    s = r.scheduler
    pending = s.decode_blocks_between(s.alloc_it, r._it0 + r._run.k)
    assert (pending > s.cache.free) is synced
    before = s.alloc_it
    c.entry.fused_routing = fused
    c.entry.choose(Request(2, 3.0, 192, 4, (1, 2, 9), 64), c.env.now)
    assert (s.alloc_it > before) is synced


@pytest.mark.parametrize("fused", [True, False])
def test_routing_leaves_a_run_pending_where_the_cache_cannot_hold_the_prefix(tmp_path, fused):
    """With 40 blocks B's run would evict, but a prompt whose first unit (9) the cache does not
    hold reads 0 there whatever is evicted: no sync."""
    c, r = _decoding_replica(tmp_path, 40)
    s = r.scheduler
    assert s.decode_blocks_between(s.alloc_it, r._it0 + r._run.k) > s.cache.free
    before = s.alloc_it
    c.entry.fused_routing = fused
    c.entry.choose(Request(2, 3.0, 192, 4, (9, 1, 2), 64), c.env.now)
    assert s.alloc_it == before
