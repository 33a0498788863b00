"""Fast paths of the iteration price (issue 17) against the op-building path they replace: the
roofline's attention priced without an Attention object must give the same float, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
