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
from kvsim.simulator.latency import IterationPricer, RooflineModel
from kvsim.simulator.latency.ops import attention_op

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
