"""The op vocabulary, the roofline model and the catalogs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.simulator.catalog import get_gpu, get_model
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency import IterationPricer, RooflineModel
from kvsim.simulator.latency.ops import AllReduce, Gemm, StepOverhead
from kvsim.simulator.latency.pricer import floor_sum


def test_gemm_is_compute_bound_when_large_and_memory_bound_when_small():
    g = get_gpu("h100-sxm")
    m = RooflineModel(g)
    big = Gemm(2, 8192, 4096, 4096)
    assert m.price(big) == pytest.approx(
        2 * 8192 * 4096 * 4096 / (989e12 * g.flops_efficiency) + g.launch_s
    )
    small = Gemm(2, 1, 4096, 14336)  # decode: reading the weight dominates
    assert m.price(small) == pytest.approx(
        2 * (4096 + 4096 * 14336 + 14336) / (3.35e12 * g.bandwidth_efficiency) + g.launch_s
    )


def test_allreduce_effective_bandwidth_follows_the_message_size_curve():
    """DESIGN §2: ~44 GB/s at 1 MB and ~480 GB/s at 8 GB on 8×H100 (NCCL measurements)."""
    m = RooflineModel(get_gpu("h100-sxm"))
    small = 1e6 / m.price(AllReduce(2, 10**6, 8))
    large = 8e9 / m.price(AllReduce(2, 8 * 10**9, 8))
    assert small / 1e9 == pytest.approx(44, rel=0.15)
    assert large / 1e9 == pytest.approx(480, rel=0.15)
    assert m.price(AllReduce(2, 10**6, 1)) == 0.0


def test_step_overhead_and_memoized_dense_part():
    g = get_gpu("h100-sxm")
    m = RooflineModel(g)
    assert m.price(StepOverhead(batch_size=10)) == pytest.approx(
        g.step_overhead_s + 10 * g.step_overhead_per_seq_s
    )
    p = IterationPricer(get_model("llama-3.1-8b"), 1, m)
    a = p.dense_s(64, 64, 64)
    assert p.dense_s(64, 64, 64) == a and len(p._layers) == len(p._head) == 1
    assert p.dense_s(64, 64, 65) > a and len(p._layers) == 1  # overhead priced apart


def _singles(p, batch, kv, k, start):
    """End times from k one-iteration runs (what exact stepping does)."""
    out, t = [], start
    for i in range(k):
        t = p.decode_run(batch, kv + batch * i, 1, t).end
        out.append(t)
    return out


@pytest.mark.parametrize("k", [1, 5, 16, 17, 300])
@pytest.mark.parametrize("batch, kv", [(32, 50_000), (1, 10), (256, 4_000_000)])
def test_decode_run_equals_single_iterations(batch, kv, k):
    """A run of k iterations (eager, or closed form with lazily materialized ends) ends where k
    one-iteration runs end; every intermediate end is the same too, and each iteration is within
    1 ns of the mixed-batch price of the same shape."""
    p = IterationPricer(get_model("llama-3.1-70b"), 4, RooflineModel(get_gpu("h200")))
    run = p.decode_run(batch, kv, k, 1000)
    singles = _singles(p, batch, kv, k, 1000)
    assert run.end == singles[-1]
    assert p.decode_run(batch, kv, k, 1000).count_before(1000) == 0  # at the start: none ended
    assert run.count_before(singles[-1] + 1) == k
    for j in sorted({0, k // 3, k // 2, k - 1}):
        assert run.count_before(singles[j]) == j  # bisect_left semantics
        assert run.count_before(singles[j] + 1) == j + 1
        assert run.ends[j] == singles[j]
    steps = [b - a for a, b in zip([1000] + singles, singles, strict=False)]
    assert steps == sorted(steps)  # longer contexts cost more
    for i in (0, k - 1):
        x = kv + batch * i
        assert abs(steps[i] - p.iteration_ns(batch, batch, batch, x, x, batch)) <= 1


def test_decode_run_cut_keeps_a_prefix():
    p = IterationPricer(get_model("llama-3.1-8b"), 1, RooflineModel(get_gpu("h100-sxm")))
    run = p.decode_run(64, 100_000, 200, 0)
    singles = _singles(p, 64, 100_000, 200, 0)
    j = run.count_before(singles[120] - 5)
    assert j == 120 and run.cut(j) == singles[120] and run.k == 121
    assert run.count_before(singles[150]) == 121  # everything of the cut run ends before


def test_decode_run_compute_bound_iterations_take_the_full_max():
    """A GPU so slow at math that decode attention is compute-bound prices each iteration with
    the full roofline max(), the same as the mixed-batch path (no fixed point)."""
    import dataclasses

    g = dataclasses.replace(get_gpu("h100-sxm"), bf16_tflops=0.001)
    p = IterationPricer(get_model("llama-3.1-8b"), 1, RooflineModel(g))
    run = p.decode_run(8, 1000, 40, 0)
    t = 0
    for i in range(40):
        t += p.iteration_ns(8, 8, 8, 1000 + 8 * i, 1000 + 8 * i, 8)
        assert run.ends[i] == t
    assert run.end == _singles(p, 8, 1000, 40, 0)[-1]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 60),
    m=st.integers(1, 10**6),
    a=st.integers(0, 10**7),
    b=st.integers(0, 10**7),
)
def test_floor_sum_equals_the_sum(n, m, a, b):
    assert floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))


def test_tensor_parallel_makes_an_iteration_faster():
    model = get_model("llama-3.1-70b")
    m = RooflineModel(get_gpu("h100-sxm"))
    one = IterationPricer(model, 1, m).iteration_ns(4096, 1, 1, 4096, 4096 * 4097 // 2, 1)
    four = IterationPricer(model, 4, m).iteration_ns(4096, 1, 1, 4096, 4096 * 4097 // 2, 1)
    assert four < one / 2.5


def test_catalogs_and_hf_config(tmp_path):
    for name in ("llama-3.1-8b", "llama-3.1-70b", "mistral-7b", "qwen2.5-7b"):
        m = get_model(name)
        assert m.source.startswith("https://huggingface.co/")
    for gpu in ("h100-sxm", "h200", "a100-80g", "h20"):
        assert get_gpu(gpu).memory_gib > 0
    assert get_model("llama-3.1-8b").kv_bytes_per_token == 131072  # 32 × 2 × 8 × 128 × 2
    cfg = {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = get_model("config.json", tmp_path)
    assert m.layers == 32 and m.head_dim == 128
    assert m.params == pytest.approx(8.03e9, rel=0.01)
    with pytest.raises(KvsimError, match="not in the catalog"):
        get_model("gpt-17")


class _PriceOnly:
    """A latency model with only ``price`` (no decode terms): decode iterations priced alone."""

    name = "price-only"

    def __init__(self, inner):
        self.price = inner.price


def test_decode_run_without_decode_terms_prices_each_iteration():
    inner = RooflineModel(get_gpu("h100-sxm"))
    p = IterationPricer(get_model("llama-3.1-8b"), 1, _PriceOnly(inner))
    run = p.decode_run(16, 20_000, 50, 7)
    t = 7
    for i in range(50):
        x = 20_000 + 16 * i
        t += p.iteration_ns(16, 16, 16, x, x, 16)
        assert run.ends[i] == t
    assert run.end == _singles(p, 16, 20_000, 50, 7)[-1] == t
