"""KV quantization against a reference written from the format's definition (KIVI, arXiv
2402.02750): stored zeros and scales, exact codes away from rounding ties, packing, and the
round trip within half a step.

The reference does not reuse the kernels module: it names each element's group by an index formula
(keys: page × kv head × channel; values: token × kv head × channel group), takes min and max per
group with ``scatter_reduce`` in float64 and unpacks bytes by integer division.
"""

from __future__ import annotations

import pytest
import torch

from kvsim.kernels.quant import QuantizedKVCache, dequantize_kv, quantize_kv

# A float64 code within this distance of a tie (k + 1/2) may round either way in the kernel's
# float32 arithmetic ((x − min)/scale ≤ 255 carries a relative error of a few 2^-24).
TIE = 1e-4


def _group_ids(t, kvh, d, page, group):
    """Group of every element of a [t, kvh, d] tensor, for keys and for values."""
    tok = torch.arange(t)[:, None, None]
    head = torch.arange(kvh)[None, :, None]
    ch = torch.arange(d)[None, None, :]
    key = ((tok // page) * kvh + head) * d + ch  # one group per page, head and channel
    val = (tok * kvh + head) * (d // group) + ch // group  # per token, head, channel group
    return key.expand(t, kvh, d), val.expand(t, kvh, d)


def _reference(x, groups, bits):
    """Per element: (group min, group step, exact real code, rounded code, near a tie)."""
    x = x.double().flatten()
    g = groups.flatten()
    n = int(g.max()) + 1
    lo = torch.full((n,), float("inf"), dtype=torch.float64).scatter_reduce(0, g, x, "amin")
    hi = torch.full((n,), float("-inf"), dtype=torch.float64).scatter_reduce(0, g, x, "amax")
    step = (hi - lo) / (2**bits - 1)
    exact = torch.where(step[g] > 0, (x - lo[g]) / step[g].clamp_min(1e-300), 0.0)
    code = torch.floor(exact + 0.5)
    near_tie = (exact - torch.floor(exact) - 0.5).abs() < TIE
    shape = groups.shape
    return (
        lo[g].reshape(shape),
        step[g].reshape(shape),
        exact.reshape(shape),
        code.reshape(shape),
        near_tie.reshape(shape),
    )


def _unpack(packed, bits):
    """Codes of packed bytes [..., n] → [..., n·8/bits]: code j of a byte is its j-th base-2^bits
    digit (lowest bits first)."""
    b = packed.long()
    digits = [(b // (2 ** (bits * j))) % (2**bits) for j in range(8 // bits)]
    return torch.stack(digits, dim=-1).flatten(-2)


def _stored(cache, ids, page, group):
    """The cache's codes, zeros and scales of the given pages, broadcast per element [t, kvh, d]."""
    ids = ids.long().cpu()
    fields = ("k_codes", "v_codes", "k_zero", "k_scale", "v_zero", "v_scale")
    c = {f: getattr(cache, f).cpu() for f in fields}
    kc = _unpack(c["k_codes"][ids], cache.bits).flatten(0, 1)
    vc = _unpack(c["v_codes"][ids], cache.bits).flatten(0, 1)
    kz = c["k_zero"][ids][:, None].expand(-1, page, -1, -1).flatten(0, 1)
    ks = c["k_scale"][ids][:, None].expand(-1, page, -1, -1).flatten(0, 1)
    vz = c["v_zero"][ids].flatten(0, 1).repeat_interleave(group, dim=-1)
    vs = c["v_scale"][ids].flatten(0, 1).repeat_interleave(group, dim=-1)
    return kc, kz, ks, vc, vz, vs


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("page, kvh, d, group", [(16, 2, 64, 32), (8, 1, 32, 16)])
def test_quantize_dequantize(gen, device, bits, dtype, page, kvh, d, group):
    pages, nb = 3, 7
    t = pages * page
    k = torch.randn(t, kvh, d, generator=gen)
    k[:, :, 3] *= 20  # an outlier channel, the reason keys are quantized per channel
    k[page : 2 * page, 0, 5] = 0.25  # a constant key group: scale 0, codes 0, exact round trip
    v = torch.randn(t, kvh, d, generator=gen)
    v[1, 0, :group] = -1.5  # a constant value group
    k, v = k.to(dtype), v.to(dtype)
    ids = torch.randperm(nb, generator=gen)[:pages].to(torch.int32)
    cache = QuantizedKVCache.empty(nb, page, kvh, d, bits, group, device=device)
    cache.k_codes.fill_(0xAA)  # poison
    cache.v_codes.fill_(0xAA)
    quantize_kv(k.to(device), v.to(device), ids.to(device), cache)

    kgroups, vgroups = _group_ids(t, kvh, d, page, group)
    got = _stored(cache, ids, page, group)
    for x, groups, (codes, zero, scale) in ((k, kgroups, got[:3]), (v, vgroups, got[3:])):
        lo, step, exact, want, near_tie = _reference(x, groups, bits)
        # Zeros are the group minima, exactly; scales (max − min)/(2^bits − 1) to float32.
        assert torch.equal(zero.double(), lo)
        assert torch.equal(scale == 0, step == 0)
        assert ((scale.double() - step).abs() <= step * 2**-22).all()
        # Codes are round((x − min)/scale): exact away from ties, a neighbour of the tie on one.
        sure = ~near_tie
        assert sure.float().mean() > 0.98, "too few codes away from a tie to check"
        assert torch.equal(codes[sure], want[sure].long())
        off = codes[near_tie] - torch.floor(exact[near_tie]).long()
        assert ((off == 0) | (off == 1)).all()

    dk, dv = dequantize_kv(cache, ids.to(device), dtype)
    eps = 1e-3 if dtype == torch.float16 else 1e-6
    for x, x_hat, groups in ((k, dk.cpu(), kgroups), (v, dv.cpu(), vgroups)):
        lo, step, _, want, near_tie = _reference(x, groups, bits)
        x, x_hat = x.double(), x_hat.double()
        # Within half a step (plus the output dtype's rounding) of the input ...
        assert ((x_hat - x).abs() <= step / 2 + eps * (1 + x.abs())).all()
        # ... equal to min + code·step, and exact where the group is constant.
        value = lo + want * step
        tol = eps * (1 + lo.abs() + want * step)  # float32 rounding of both terms and their sum
        assert ((x_hat - value).abs() <= tol)[~near_tie].all()
        assert (step == 0).any() and torch.equal(x_hat[step == 0], x[step == 0])


def test_constant_page_has_zero_scale_and_exact_round_trip(device):
    k = torch.full((16, 1, 32), 0.75, device=device)
    cache = QuantizedKVCache.empty(2, 16, 1, 32, 4, 16, device=device)
    ids = torch.tensor([1], dtype=torch.int32, device=device)
    quantize_kv(k, k, ids, cache)
    dk, dv = dequantize_kv(cache, ids, torch.float32)
    assert torch.equal(dk, k) and torch.equal(dv, k)
    assert (cache.k_scale[1] == 0).all()


def test_codes_of_a_ramp_by_hand(device):
    """Keys 0, 1, …, 15 down a page in every channel at 2 bits: step 5, codes
    round(x/5) = 0,0,0,1,1,1,1,1,2,2,2,2,2,3,3,3, packed four to a byte, lowest bits first."""
    page, d = 16, 32
    ramp = torch.arange(page, dtype=torch.float32)[:, None, None].expand(page, 1, d).contiguous()
    cache = QuantizedKVCache.empty(1, page, 1, d, 2, 16, device=device)
    quantize_kv(ramp, ramp, torch.tensor([0], dtype=torch.int32, device=device), cache)
    want = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3]
    assert torch.equal(cache.k_scale[0, 0].cpu(), torch.full((d,), 5.0))
    assert torch.equal(cache.k_zero[0, 0].cpu(), torch.zeros(d))
    # Every byte of token s holds four copies of its code c: c·(1 + 4 + 16 + 64) = 85·c.
    bytes_ = cache.k_codes[0, :, 0].cpu().long()
    assert torch.equal(bytes_, torch.tensor(want)[:, None].expand(page, d // 4) * 85)
    # Values of one token are constant across channels: scale 0, codes 0.
    assert (cache.v_scale[0].cpu() == 0).all() and (cache.v_codes[0].cpu() == 0).all()
    assert torch.equal(cache.v_zero[0, :, 0, 0].cpu(), torch.arange(page, dtype=torch.float32))


def test_bad_arguments(device):
    with pytest.raises(ValueError, match="bits must be 2, 4 or 8"):
        QuantizedKVCache.empty(2, 16, 1, 32, 3, device=device)
    cache = QuantizedKVCache.empty(2, 16, 1, 32, 4, 16, device=device)
    with pytest.raises(ValueError, match="must be \\[pages·16"):
        quantize_kv(
            torch.zeros(10, 1, 32, device=device),
            torch.zeros(10, 1, 32, device=device),
            torch.zeros(1, dtype=torch.int32, device=device),
            cache,
        )
