"""Transfer codecs: payload bytes by independent arithmetic, the work each side runs, declared
quality records, and the registry's checks."""

from __future__ import annotations

import math

import pytest
from hand_prices import _attention, _elementwise, _gemm

from kvsim.simulator.catalog import get_gpu, get_model, with_kv_cache_dtype
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency import IterationPricer, RooflineModel
from kvsim.simulator.policies import TRANSFER
from kvsim.simulator.policies.transfer import TransferContext

MISTRAL = get_model("mistral-7b")  # 32 layers, 8 KV heads of 128, hidden 4096, bf16
LLAMA = get_model("llama-3.1-8b")  # the same layer shapes
T = 900


def _codec(name, model=MISTRAL, consumer=None, **params):
    ctx = TransferContext(model, consumer or model, page_tokens=16)
    return TRANSFER.create(name, ctx, **params)


@pytest.mark.parametrize(
    "name, params, payload",
    [
        ("raw", {}, T * 32 * (2 * 8 * 128) * 2),
        # 4-bit codes, plus fp32 scale and zero (8 B): keys per channel per 16-token page
        # (ceil(900 / 16) = 57 pages), values per token per 32-channel group (4 per head).
        ("quantized", {"bits": 4},
         T * 32 * 2048 // 2 + 32 * 8 * (57 * 8 * 128 + T * 8 * 4)),
        ("quantized", {"bits": 2, "group": 64},
         T * 32 * 2048 // 4 + 32 * 8 * (57 * 8 * 128 + T * 8 * 2)),
        # Raw KV of 28 layers and a hidden state (4096) for each of 4.
        ("layer_recompute", {"k": 4}, T * 2 * (28 * 2048 + 4 * 4096)),
        ("consumer_prefill", {}, 4 * T),
        # 26 Reuse layers at r_K + r_V = 192, 6 Patch layers at r_H = 256.
        ("scd", {"rank_k": 64, "rank_v": 128, "rank_h": 256}, T * 2 * (26 * 192 + 6 * 256)),
        ("scd", {"rank_k": 64, "rank_v": 64, "rank_h": 512, "patch_layers": 0},
         T * 2 * 32 * 128),
        ("scd_reuse_only", {"rank_k": 32, "rank_v": 96}, T * 2 * 32 * 128),
    ],
)  # fmt: skip
def test_payload_bytes(name, params, payload):
    assert _codec(name, **params).plan(T).payload_bytes == payload


def test_an_fp8_kv_cache_halves_raw_kv_but_not_hidden_states_or_codes():
    """A producer storing its KV in fp8 (``cache.kv_cache_dtype``) sends one byte an element of
    raw KV; a hidden state and SCD's codes stay in the model's two bytes."""
    fp8 = with_kv_cache_dtype(MISTRAL, "fp8")
    assert _codec("raw", fp8).plan(T).payload_bytes == T * 32 * 2048
    assert _codec("layer_recompute", fp8, k=4).plan(T).payload_bytes == T * (28 * 2048 + 4 * 8192)
    scd = {"rank_k": 64, "rank_v": 128, "rank_h": 256}
    assert _codec("scd", fp8, **scd).plan(T).payload_bytes == T * 2 * (26 * 192 + 6 * 256)


def test_raw_and_consumer_prefill_run_no_codec_work():
    for name in ("raw", "consumer_prefill"):
        plan = _codec(name).plan(T)
        assert plan.producer_ops == () and plan.consumer_ops == ()
    assert _codec("raw").plan(T).kv and not _codec("consumer_prefill").plan(T).kv


def test_quantization_runs_kv_quant_and_kv_dequant_on_every_layer():
    plan = _codec("quantized", bits=4).plan(T)
    ((n_p, q),), ((n_c, dq),) = plan.producer_ops, plan.consumer_ops
    assert (n_p, q.kind, q.tokens, q.kv_dim, q.bits) == (32, "kv_quant", T, 2048, 4)
    assert (n_c, dq.kind, dq.tokens, dq.kv_dim, dq.bits) == (32, "kv_dequant", T, 2048, 4)


def test_scd_runs_encode_reuse_and_patch_on_the_right_layers():
    plan = _codec("scd", rank_k=64, rank_v=128, rank_h=256, patch_layers=6).plan(T)
    got_p = sorted((n, op.kind, op.kv_dim, op.rank) for n, op in plan.producer_ops)
    assert got_p == [(6, "scd_encode", 4096, 256), (13.0, "scd_encode", 2048, 64),
                     (13.0, "scd_encode", 2048, 128)]  # fmt: skip
    got_c = sorted((n, op.kind, op.rank) for n, op in plan.consumer_ops)
    assert got_c == [(6, "scd_patch", 256), (13.0, "scd_reuse", 64), (13.0, "scd_reuse", 128)]
    patch = next(op for _, op in plan.consumer_ops if op.kind == "scd_patch")
    assert (patch.hidden, patch.kv_dim, patch.tokens) == (4096, 2048, T)


def test_layer_recompute_costs_k_decoder_layers_over_the_prompt():
    """The consumer's work for k layers equals k layers of a prefill, priced by hand: QKV, O,
    gate/up and down GEMMs, rotary, SiLU-mul, two fused norms and causal attention over T."""
    k = 5
    plan = _codec("layer_recompute", model=LLAMA, k=k).plan(T)
    pricer = IterationPricer(LLAMA, 1, RooflineModel(get_gpu("h100-sxm")))
    h, heads, kvh, hd, inter = 4096, 32, 8, 128, 14336
    layer = (
        _gemm(T, h, (heads + 2 * kvh) * hd) + _elementwise(T, (heads + kvh) * hd, 2)
        + _gemm(T, heads * hd, h) + _gemm(T, h, 2 * inter) + _elementwise(T, inter, 3)
        + _gemm(T, inter, h) + 2 * _elementwise(T, h, 4)
        + _attention(T * (T + 1) // 2, T, T, 1)
    )  # fmt: skip
    assert math.isclose(pricer.extra_s(plan.consumer_ops), k * layer, rel_tol=1e-12)
    assert plan.producer_ops == ()


def test_declared_quality_records_say_where_they_come_from():
    scd = _codec("scd", rank_k=64, rank_v=64, rank_h=64).quality
    assert (scd.f1_vs_oracle, scd.bound) == (0.95, "at least")
    assert "2606.07684" in scd.source and "within 5% F1 of the oracle" in scd.note
    oracle = _codec("consumer_prefill").quality
    assert (oracle.f1_vs_oracle, oracle.kl_vs_oracle, oracle.bound) == (1.0, 0.0, "exact")
    # Raw KV is the consumer's own between replicas of one model, not across models.
    assert _codec("raw").quality.bound == "exact"
    cross = _codec("raw", model=get_model("mistrallite"), consumer=get_model("mistral-7b-v0.1"))
    assert cross.quality.f1_vs_oracle is None and "misalignment" in cross.quality.note
    for name, params in (("quantized", {"bits": 4}), ("layer_recompute", {"k": 2}),
                         ("scd_reuse_only", {"rank_k": 8, "rank_v": 8})):  # fmt: skip
        q = _codec(name, **params).quality
        assert q.f1_vs_oracle is None and q.source and q.note  # no figure found: none invented
    mine = _codec("raw", quality={"f1_vs_oracle": 0.9, "source": "my eval, table 2"}).quality
    assert (mine.f1_vs_oracle, mine.source) == (0.9, "my eval, table 2")


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("scd", {"rank_k": 0, "rank_v": 8, "rank_h": 8}, "rank_k = 0; allowed: an integer in"),
        ("scd", {"rank_k": 8, "rank_v": 8, "rank_h": 8, "patch_layers": 33},
         "patch_layers = 33; allowed: an integer in [0, 32]"),
        ("layer_recompute", {}, "k = None; allowed: an integer in [0, 32]"),
        ("quantized", {"bits": 4, "group": 48}, "group = 48; allowed: a divisor of the head dim"),
        ("raw", {"quality": {"f1": 1, "source": "x"}}, "quality: unknown key 'f1'"),
        ("raw", {"quality": {"kl_vs_oracle": -1, "source": "x"}}, "quality.kl_vs_oracle = -1"),
        ("raw", {"ranks": 3}, "transfer policy 'raw': bad parameters"),
    ],
)  # fmt: skip
def test_bad_codec_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(KvsimError) as e:
        _codec(name, **params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_dotted_path_names_a_users_codec_and_is_interface_checked():
    assert _codec("helpers:HalfRaw").plan(10).payload_bytes == 10 * 65536
    with pytest.raises(KvsimError, match="does not implement the transfer interface"):
        TRANSFER.resolve("kvsim.simulator.policies.eviction:LRU")
