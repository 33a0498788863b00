"""GPU-only checks: bf16 and realistic Llama-3.1-8B shapes (32 heads, 8 KV heads, head_dim 128).

Run on a GPU with ``TRITON_INTERPRET=0 python3 -m pytest -m gpu tests/kernels``.
"""

from __future__ import annotations

import pytest
import torch

from kvsim.kernels.msa import gather_segments, msa_decode, msa_prefill, msa_reference
from kvsim.kernels.quant import QuantizedKVCache, dequantize_kv, kv_reference, quantize_kv
from kvsim.kernels.scd import project_reference, scd_reuse
from kvsim.kernels.ssm import ssm_reference, ssm_scan

pytestmark = pytest.mark.gpu
H, KVH, D, PAGE = 32, 8, 128, 16


def _rel(a, ref):
    ref = ref.to(a.device).double()
    return ((a.double() - ref).norm() / ref.norm()).item()


def _paged(ctx, gen, n_segs, dtype=torch.bfloat16):
    nb = -(-ctx // PAGE) + 1
    perm = torch.randperm(nb + 8, generator=gen)[:nb].to(torch.int32)
    k = torch.randn(nb + 8, PAGE, KVH, D, generator=gen).to(dtype).cuda()
    v = torch.randn(nb + 8, PAGE, KVH, D, generator=gen).to(dtype).cuda()
    bounds = torch.linspace(0, ctx, n_segs + 1).long().tolist()
    segs = [(bounds[i], bounds[i + 1] - bounds[i], bounds[i]) for i in range(n_segs)]
    return k, v, perm[None].cuda(), segs


@pytest.mark.parametrize("ctx, n_segs", [(4096, 1), (20000, 8)])
def test_msa_decode_bf16_long_context(gen, ctx, n_segs):
    k, v, table, segs = _paged(ctx, gen, n_segs)
    seg = torch.tensor([segs], dtype=torch.int32).cuda()
    n = torch.tensor([n_segs], dtype=torch.int32).cuda()
    q = torch.randn(1, H, D, generator=gen).to(torch.bfloat16).cuda()
    pos = torch.tensor([ctx - 1], dtype=torch.int32).cuda()
    out = torch.full_like(q, float("nan"))
    got, lse = msa_decode(q, pos, k, v, table, seg, n, out=out)
    rk, rv, rp = gather_segments(k, v, table[0], segs)
    ref, ref_lse = msa_reference(q, pos, rk, rv, rp)
    assert _rel(got, ref) < 1e-2
    assert torch.allclose(lse.double(), ref_lse.to(lse.device), atol=2e-2)


def test_msa_prefill_bf16_with_cached_segments(gen):
    ctx, q_len = 3000, 512
    k, v, table, segs = _paged(ctx, gen, 4)
    seg = torch.tensor([segs], dtype=torch.int32).cuda()
    n = torch.tensor([4], dtype=torch.int32).cuda()
    q = torch.randn(q_len, H, D, generator=gen).to(torch.bfloat16).cuda()
    cu = torch.tensor([0, q_len], dtype=torch.int32).cuda()
    pos = torch.arange(ctx - q_len, ctx, dtype=torch.int32).cuda()
    got, _ = msa_prefill(q, cu, pos, k, v, table, seg, n, out=torch.full_like(q, float("nan")))
    rk, rv, rp = gather_segments(k, v, table[0], segs)
    ref, _ = msa_reference(q, pos, rk, rv, rp)
    assert _rel(got, ref) < 1e-2


def test_scd_reuse_bf16(gen):
    t, r = 1000, 256
    codes = torch.randn(t, r, generator=gen).to(torch.bfloat16).cuda()
    dec = (torch.randn(r, KVH * D, generator=gen) / r**0.5).to(torch.bfloat16).cuda()
    pos = torch.arange(t, dtype=torch.int32).cuda()
    slots = torch.randperm(t + 64, generator=gen)[:t].to(torch.int32).cuda()
    kc = torch.full(
        (-(-(t + 64) // PAGE), PAGE, KVH, D), float("nan"), dtype=torch.bfloat16, device="cuda"
    )
    vc = kc.clone()
    scd_reuse(codes, codes, dec, dec, pos, slots, kc, vc)
    got = kc.view(-1, KVH, D)[slots.long()]
    assert _rel(got, project_reference(codes, dec, pos, KVH, rope=True)) < 1e-2


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quant_bf16(gen, bits):
    t = 64 * PAGE
    k = torch.randn(t, KVH, D, generator=gen).to(torch.bfloat16).cuda()
    v = torch.randn(t, KVH, D, generator=gen).to(torch.bfloat16).cuda()
    ids = torch.arange(64, dtype=torch.int32).cuda()
    cache = QuantizedKVCache.empty(64, PAGE, KVH, D, bits, 32, device="cuda")
    quantize_kv(k, v, ids, cache)
    dk, dv = dequantize_kv(cache, ids, torch.bfloat16)
    _, _, k_hat, v_hat, _, _ = kv_reference(k, v, PAGE, bits, 32)
    assert _rel(dk, k_hat) < 1e-2 and _rel(dv, v_hat) < 1e-2


def test_ssm_scan_bf16(gen):
    bsz, t, heads, p, n = 1, 512, 8, 64, 128
    x = torch.randn(bsz, t, heads, p, generator=gen).to(torch.bfloat16).cuda()
    log_a = (-torch.rand(bsz, t, heads, generator=gen) * 0.3).cuda()
    b = (torch.randn(bsz, t, n, generator=gen) / n**0.5).to(torch.bfloat16).cuda()
    c = (torch.randn(bsz, t, n, generator=gen) / n**0.5).to(torch.bfloat16).cuda()
    y, states = ssm_scan(x, log_a, b, c, chunk=64)
    ry, rs = ssm_reference(x.cpu(), log_a.cpu(), b.cpu(), c.cpu())
    assert _rel(y, ry) < 2e-2
    assert _rel(states[:, -1], rs[:, -1]) < 2e-2
