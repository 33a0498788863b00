"""SCD encode / reuse / patch against float64 references; paged writes touch only their slots.

The references are the tests' own (SCD, arXiv 2606.07684): RoPE as a complex rotation of the
pairs (x_i, x_{i+D/2}) by pos·base^(−2i/D), projections as einsums over per-head views of the
weights, and the Patch aligner (Linear, SiLU, Linear) written out with u·σ(u). The kernels are
never compared with the module's own references (one test checks the module's RoPE against the
test's).
"""

from __future__ import annotations

import math

import pytest
import torch

from kvsim.kernels.scd import rope_reference, scd_encode, scd_patch, scd_reuse

TOL = {torch.float16: 1e-2, torch.float32: 1e-4}


def _rope(x, positions, base, inverse=False):
    """Rotate-half RoPE of x [tokens, heads, D] in float64: the pair (x_i, x_{i+D/2}) is the
    complex number x_i + j·x_{i+D/2}, turned by the angle pos·base^(−2i/D) (back, if inverse)."""
    d = x.shape[-1]
    x = x.double().cpu()
    freq = torch.exp(-math.log(base) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double().cpu()[:, None, None] * freq
    turn = torch.polar(torch.ones_like(angle), -angle if inverse else angle)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * turn
    return torch.cat([z.real, z.imag], dim=-1)


def _project(x, w, kv_heads):
    """x [tokens, n] times w [n, kv_heads·D], as [tokens, kv_heads, D] in float64."""
    w = w.double().cpu().reshape(w.shape[0], kv_heads, -1)
    return torch.einsum("tn,nhd->thd", x.double().cpu(), w)


def _aligner(codes, w1, b1, w2, b2):
    """Linear → SiLU (u·σ(u)) → Linear, in float64."""
    w1, b1, w2, b2 = (t.double().cpu() for t in (w1, b1, w2, b2))
    u = codes.double().cpu() @ w1 + b1
    return (u * torch.sigmoid(u)) @ w2 + b2


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _poisoned_cache(num_blocks, page, kvh, d, dtype, device):
    return torch.full((num_blocks, page, kvh, d), float("nan"), dtype=dtype, device=device)


def _slots(gen, t, num_blocks, page):
    return torch.randperm(num_blocks * page, generator=gen)[:t].to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(
    "t, kvh, d, r_k, r_v", [(37, 2, 32, 24, 40), (70, 4, 64, 64, 16), (1, 1, 32, 16, 16)]
)
def test_encode_matches_reference(gen, device, dtype, t, kvh, d, r_k, r_v):
    k = torch.randn(t, kvh, d, generator=gen).to(dtype).to(device)
    v = torch.randn(t, kvh, d, generator=gen).to(dtype).to(device)
    pos = torch.randint(0, 3000, (t,), generator=gen, dtype=torch.int32).to(device)
    ek = (torch.randn(kvh * d, r_k, generator=gen) / d**0.5).to(dtype).to(device)
    ev = (torch.randn(kvh * d, r_v, generator=gen) / d**0.5).to(dtype).to(device)
    ck, cv = scd_encode(k, v, pos, ek, ev)
    # codes[t, r] = Σ_h Σ_d derope(k)[t, h, d] · enc[h·D + d, r]
    k_free = _rope(k, pos, 500000.0, inverse=True)
    rk = torch.einsum("thd,hdr->tr", k_free, ek.double().cpu().reshape(kvh, d, r_k))
    rv = torch.einsum("thd,hdr->tr", v.double().cpu(), ev.double().cpu().reshape(kvh, d, r_v))
    assert ck.shape == (t, r_k) and cv.shape == (t, r_v)
    assert _rel(ck, rk) < TOL[dtype] and _rel(cv, rv) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(
    "t, kvh, d, r_k, r_v, page", [(45, 2, 32, 20, 48, 16), (16, 8, 32, 64, 8, 8)]
)
def test_reuse_writes_rope_keys_and_values_into_their_slots(
    gen, device, dtype, t, kvh, d, r_k, r_v, page
):
    nb = -(-t // page) + 4
    ck = torch.randn(t, r_k, generator=gen).to(dtype).to(device)
    cv = torch.randn(t, r_v, generator=gen).to(dtype).to(device)
    dk = (torch.randn(r_k, kvh * d, generator=gen) / r_k**0.5).to(dtype).to(device)
    dv = (torch.randn(r_v, kvh * d, generator=gen) / r_v**0.5).to(dtype).to(device)
    pos = torch.randint(0, 3000, (t,), generator=gen, dtype=torch.int32).to(device)
    slots = _slots(gen, t, nb, page).to(device)
    kc = _poisoned_cache(nb, page, kvh, d, dtype, device)
    vc = _poisoned_cache(nb, page, kvh, d, dtype, device)
    scd_reuse(ck, cv, dk, dv, pos, slots, kc, vc)
    flat_k, flat_v = kc.view(-1, kvh, d), vc.view(-1, kvh, d)
    ref_k = _rope(_project(ck, dk, kvh), pos, 500000.0)
    ref_v = _project(cv, dv, kvh)
    assert _rel(flat_k[slots.long()], ref_k) < TOL[dtype]
    assert _rel(flat_v[slots.long()], ref_v) < TOL[dtype]
    untouched = torch.ones(nb * page, dtype=torch.bool, device=device)
    untouched[slots.long()] = False
    assert torch.isnan(flat_k[untouched]).all() and torch.isnan(flat_v[untouched]).all()


def test_full_rank_round_trip_recovers_the_cache(gen, device):
    """With an orthonormal full-rank encoder and its transpose as decoder, encode → reuse gives
    back the producer's K (RoPE removed then re-applied at the same positions) and V."""
    t, kvh, d, page = 40, 2, 32, 16
    k = torch.randn(t, kvh, d, generator=gen).to(device)
    v = torch.randn(t, kvh, d, generator=gen).to(device)
    pos = torch.arange(100, 100 + t, dtype=torch.int32).to(device)
    q, _ = torch.linalg.qr(torch.randn(kvh * d, kvh * d, generator=gen, dtype=torch.float64))
    enc = q.float().contiguous().to(device)
    ck, cv = scd_encode(k, v, pos, enc, enc)
    slots = torch.arange(t, dtype=torch.int32).to(device)
    kc = _poisoned_cache(-(-t // page), page, kvh, d, torch.float32, device)
    vc = _poisoned_cache(-(-t // page), page, kvh, d, torch.float32, device)
    dec = enc.t().contiguous()
    scd_reuse(ck, cv, dec, dec, pos, slots, kc, vc)
    assert torch.allclose(kc.view(-1, kvh, d)[:t], k, atol=1e-4)
    assert torch.allclose(vc.view(-1, kvh, d)[:t], v, atol=1e-4)


def test_rope_by_hand():
    """The test's RoPE on D = 4, base 100: pair i turns by pos·100^(−i/2), i.e. pos and pos/10."""
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    pos = torch.tensor([3])
    c0, s0, c1, s1 = math.cos(3), math.sin(3), math.cos(0.3), math.sin(0.3)
    want = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
    assert torch.allclose(_rope(x, pos, 100.0), torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(_rope(_rope(x, pos, 100.0), pos, 100.0, inverse=True), x.double())


def test_module_rope_reference_agrees():
    """The module's float64 RoPE (offered to users) equals the test's, both ways."""
    x = torch.randn(5, 2, 32, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 100, 4000])
    for inverse in (False, True):
        got = rope_reference(x, pos, 1e4, inverse=inverse)
        assert torch.allclose(got, _rope(x, pos, 1e4, inverse=inverse), atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_patch_aligner_then_own_projection(gen, device, dtype):
    t, r_h, mid, hidden, kvh, d, page = 33, 16, 64, 96, 2, 32, 16
    nb = -(-t // page) + 2
    codes = torch.randn(t, r_h, generator=gen).to(dtype).to(device)

    def w(*shape, scale):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    aligner = (
        w(r_h, mid, scale=r_h**-0.5),
        w(mid, scale=0.1),
        w(mid, hidden, scale=mid**-0.5),
        w(hidden, scale=0.1),
    )
    wk, wv = w(hidden, kvh * d, scale=hidden**-0.5), w(hidden, kvh * d, scale=hidden**-0.5)
    pos = torch.randint(0, 2000, (t,), generator=gen, dtype=torch.int32).to(device)
    slots = _slots(gen, t, nb, page).to(device)
    kc = _poisoned_cache(nb, page, kvh, d, dtype, device)
    vc = _poisoned_cache(nb, page, kvh, d, dtype, device)
    x = scd_patch(codes, aligner, wk, wv, pos, slots, kc, vc)
    ref_x = _aligner(codes, *aligner)
    assert x.shape == (t, hidden) and _rel(x, ref_x) < TOL[dtype]
    # K and V from the reference's own aligner output, with the consumer's weights.
    ref_k = _rope(_project(ref_x, wk, kvh), pos, 500000.0)
    ref_v = _project(ref_x, wv, kvh)
    assert _rel(kc.view(-1, kvh, d)[slots.long()], ref_k) < TOL[dtype]
    assert _rel(vc.view(-1, kvh, d)[slots.long()], ref_v) < TOL[dtype]
    untouched = torch.ones(nb * page, dtype=torch.bool, device=device)
    untouched[slots.long()] = False
    assert torch.isnan(kc.view(-1, kvh, d)[untouched]).all()
    assert torch.isnan(vc.view(-1, kvh, d)[untouched]).all()


def test_wrappers_reject_bad_shapes(device):
    k = torch.zeros(4, 2, 32, device=device)
    pos = torch.zeros(4, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="enc_k must be a row-major"):
        scd_encode(k, k, pos, torch.zeros(63, 8, device=device), torch.zeros(64, 8, device=device))
    with pytest.raises(ValueError, match="head_dim must be a power of two"):
        scd_encode(
            torch.zeros(4, 2, 24, device=device),
            torch.zeros(4, 2, 24, device=device),
            pos,
            torch.zeros(48, 8, device=device),
            torch.zeros(48, 8, device=device),
        )
    cache = torch.zeros(2, 16, 2, 32, device=device)
    with pytest.raises(ValueError, match="disagree"):
        scd_reuse(
            torch.zeros(4, 8, device=device),
            torch.zeros(4, 8, device=device),
            torch.zeros(9, 64, device=device),
            torch.zeros(8, 64, device=device),
            pos,
            pos,
            cache,
            cache,
        )
