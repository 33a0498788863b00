"""The elementwise kernels against float64 references (fresh random inputs, poisoned outputs)."""

from __future__ import annotations

import math

import pytest
import torch

from kvsim.kernels.elementwise import (
    fused_add_rms_norm,
    fused_add_rms_norm_reference,
    rope_cache,
    rotary,
    rotary_reference,
    silu_and_mul,
    silu_and_mul_reference,
)

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens, hidden", [(1, 64), (5, 96), (3, 256)])
def test_fused_add_rms_norm(gen, device, dtype, tokens, hidden):
    x = torch.randn(tokens, hidden, generator=gen).to(dtype).to(device)
    res = torch.randn(tokens, hidden, generator=gen).to(dtype).to(device)
    w = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype).to(device)
    ref_y, ref_res = fused_add_rms_norm_reference(x, res, w)
    y = fused_add_rms_norm(x, res, w)
    assert torch.allclose(res.double().cpu(), ref_res.cpu(), atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.allclose(y.double().cpu(), ref_y.cpu(), atol=4 * TOL[dtype], rtol=4 * TOL[dtype])


def test_rms_norm_by_hand(device):
    """x + r = [3, 4]: RMS = sqrt(12.5), so y = [3, 4] / 3.5355… · w."""
    x = torch.tensor([[1.0, 1.0]], device=device)
    r = torch.tensor([[2.0, 3.0]], device=device)
    y = fused_add_rms_norm(x, r, torch.tensor([1.0, 2.0], device=device), eps=0.0)
    rms = math.sqrt(12.5)
    assert r.tolist() == [[3.0, 4.0]]
    assert y.cpu()[0].tolist() == pytest.approx([3 / rms, 8 / rms], rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens, heads, head_dim", [(4, 3, 32), (7, 2, 64)])
def test_rotary(gen, device, dtype, tokens, heads, head_dim):
    cs = rope_cache(512, head_dim, device=device)
    pos = torch.randint(0, 512, (tokens,), generator=gen, dtype=torch.int32).to(device)
    qk = torch.randn(tokens, heads, head_dim, generator=gen).to(dtype).to(device)
    ref = rotary_reference(qk, pos, cs)
    rotary(qk, pos, cs)
    assert torch.allclose(qk.double().cpu(), ref.cpu(), atol=2 * TOL[dtype], rtol=2 * TOL[dtype])


def test_rotary_at_position_zero_is_identity_and_preserves_norms(gen, device):
    cs = rope_cache(64, 32, device=device)
    qk = torch.randn(5, 2, 32, generator=gen).to(device)
    before = qk.clone()
    rotary(qk, torch.zeros(5, dtype=torch.int32, device=device), cs)
    assert torch.equal(qk, before)
    rotary(qk, torch.arange(5, dtype=torch.int32, device=device) * 7, cs)
    assert torch.allclose(qk.norm(dim=-1), before.norm(dim=-1), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens, inter, block", [(3, 48, 32), (2, 100, 64), (1, 1024, 1024)])
def test_silu_and_mul(gen, device, dtype, tokens, inter, block):
    gu = torch.randn(tokens, 2 * inter, generator=gen).to(dtype).to(device)
    out = silu_and_mul(gu, block=block)
    ref = silu_and_mul_reference(gu)
    assert torch.allclose(out.double().cpu(), ref.cpu(), atol=2 * TOL[dtype], rtol=2 * TOL[dtype])


def test_bad_shapes_are_refused(device):
    with pytest.raises(ValueError, match="expected"):
        fused_add_rms_norm(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(4))
    with pytest.raises(ValueError, match="even head_dim"):
        rotary(torch.zeros(2, 1, 3), torch.zeros(2, dtype=torch.int32), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"2·inter"):
        silu_and_mul(torch.zeros(2, 5))
