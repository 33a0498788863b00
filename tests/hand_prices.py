"""Iteration prices of Llama-3.1-8B on one H100, computed by hand from the catalog's figures and
the roofline's documented formulas, written out independently of the simulator's op, pricer and
roofline code (for event-log tests)."""

from __future__ import annotations

import math

from kvsim.simulator.catalog import get_gpu

# Llama-3.1-8B (config.json) on one H100 SXM.
L, H, HEADS, KV_HEADS, HD, INTER, VOCAB = 32, 4096, 32, 8, 128, 14336, 128256


def _gpu():
    g = get_gpu("h100-sxm")
    return g, g.bf16_tflops * 1e12, g.hbm_tbyte_per_s * 1e12 * g.bandwidth_efficiency


def _roof(flops, nbytes):
    g, peak, bw = _gpu()
    return max(flops / peak, nbytes / bw) + g.launch_s


def _gemm(t, k, n):
    """Waves of output tiles over the SMs for the best of cuBLAS's tile shapes (efficiency falls
    with the tile's arithmetic intensity), or the bytes at the copy rate."""
    g, peak, bw = _gpu()
    best = math.inf
    for tm, tn in ((128, 256), (128, 128), (64, 128), (64, 64)):
        eff = (
            g.gemm_efficiency * ((tm * tn / (tm + tn)) / (128 * 256 / 384)) ** g.gemm_tile_exponent
        )
        waves = math.ceil(math.ceil(t / tm) * math.ceil(n / tn) / g.sms)
        best = min(best, waves * (2 * tm * tn * k / (peak / g.sms * eff) + g.gemm_tile_s))
    return max(best, 2 * (t * k + k * n + t * n) / bw) + g.gemm_launch_s


def _elementwise(t, width, tensors, dtype_bytes=2):
    """A memory-bound pass over ``tensors`` tensors of t × width (4 flops an element)."""
    return _roof(4 * t * width, dtype_bytes * t * width * tensors)


def _attention(pairs, kv_read, q_tokens, seqs):
    """Compute at the FlashAttention fraction of peak; KV read at the decode fraction of the copy
    rate, lower with few streams (sequences × KV heads)."""
    g, peak, bw = _gpu()
    compute = 4 * HEADS * HD * pairs / (peak * g.attention_prefill_efficiency)
    eff = g.attention_decode_efficiency * (
        1 - math.exp(-seqs * KV_HEADS / g.attention_decode_streams)
    )
    memory = 2 * (2 * kv_read * KV_HEADS * HD + 2 * q_tokens * HEADS * HD) / (bw * eff)
    return max(compute, memory) + g.launch_s


def iteration_ns(seqs: list[tuple[int, int]], logits: int, extra_s: float = 0.0) -> int:
    """One iteration: ``seqs`` is [(context already cached, new tokens)], ``logits`` sampling,
    ``extra_s`` seconds of extra ops (codec work) in the same iteration."""
    g, _, _ = _gpu()
    t = sum(q for _, q in seqs)
    dense = (
        _gemm(t, H, (HEADS + 2 * KV_HEADS) * HD)
        + _elementwise(t, (HEADS + KV_HEADS) * HD, 2)  # rotary on q and k
        + _gemm(t, HEADS * HD, H)
        + _gemm(t, H, 2 * INTER)
        + _elementwise(t, INTER, 3)  # SiLU · mul
        + _gemm(t, INTER, H)
    )
    norms = (2 * L + 1) * _elementwise(t, H, 4)  # fused residual add + RMSNorm, and the final one
    pairs = sum(q * c + q * (q + 1) // 2 for c, q in seqs)
    kv_read = sum(c + q for c, q in seqs)
    total = L * dense + norms + L * _attention(pairs, kv_read, t, len(seqs))
    if logits:  # the LM head and fp32 sampling over the vocabulary (about 5 passes)
        total += _gemm(logits, H, VOCAB) + _elementwise(logits, VOCAB, 5, dtype_bytes=4)
    total += g.step_overhead_s + g.step_overhead_per_seq_s * len(seqs)
    if extra_s:
        total += extra_s
    return max(1, round(total * 1e9))


def plain_op_s(flops: float, nbytes: float) -> float:
    """An op the roofline prices plainly (codec and quantization kernels): the slower of peak
    compute and the measured copy rate, plus a launch."""
    return _roof(flops, nbytes)
