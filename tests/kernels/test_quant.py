"""KV quantization: codes equal the reference's, error within half a step, paged round trip."""

from __future__ import annotations

import pytest
import torch

from kvsim.kernels.quant import (
    QuantizedKVCache,
    dequantize_kv,
    kv_reference,
    quantize_kv,
    unpack_reference,
)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("page, kvh, d, group", [(16, 2, 64, 32), (8, 1, 32, 16)])
def test_quantize_dequantize(gen, device, bits, dtype, page, kvh, d, group):
    pages, nb = 3, 7
    t = pages * page
    k = torch.randn(t, kvh, d, generator=gen)
    k[:, :, 3] *= 20  # an outlier channel, the reason keys are quantized per channel
    k = k.to(dtype).to(device)
    v = torch.randn(t, kvh, d, generator=gen).to(dtype).to(device)
    ids = torch.randperm(nb, generator=gen)[:pages].to(torch.int32).to(device)
    cache = QuantizedKVCache.empty(nb, page, kvh, d, bits, group, device=device)
    cache.k_codes.fill_(0xAA)  # poison
    cache.v_codes.fill_(0xAA)
    quantize_kv(k, v, ids, cache)
    kc, vc, k_hat, v_hat, ks, vs = kv_reference(k, v, page, bits, group)
    got_kc = unpack_reference(cache.k_codes[ids.long()], bits).reshape(t, kvh, d)
    got_vc = unpack_reference(cache.v_codes[ids.long()], bits).reshape(t, kvh, d)
    assert torch.equal(got_kc.cpu(), kc.cpu()) and torch.equal(got_vc.cpu(), vc.cpu())
    out_k = torch.full((t, kvh, d), float("nan"), dtype=dtype)
    dk, dv = dequantize_kv(cache, ids, dtype)
    out_k.copy_(dk.cpu())
    assert not torch.isnan(out_k).any()
    # Within half a quantization step (plus the output dtype's rounding) of the input.
    kstep = ks.expand(-1, page, -1, -1).reshape(t, kvh, d)
    vstep = vs.expand(-1, -1, -1, group).reshape(t, kvh, d)
    eps = 1e-3 if dtype == torch.float16 else 1e-6
    assert ((dk.float() - k.float()).abs() <= kstep / 2 + eps * (1 + k.float().abs())).all()
    assert ((dv.float() - v.float()).abs() <= vstep / 2 + eps * (1 + v.float().abs())).all()
    assert torch.allclose(dk.float(), k_hat.to(dk.device), atol=eps * 8, rtol=eps)
    assert torch.allclose(dv.float(), v_hat.to(dv.device), atol=eps * 8, rtol=eps)


def test_constant_page_has_zero_scale_and_exact_round_trip(device):
    k = torch.full((16, 1, 32), 0.75, device=device)
    cache = QuantizedKVCache.empty(2, 16, 1, 32, 4, 16, device=device)
    ids = torch.tensor([1], dtype=torch.int32, device=device)
    quantize_kv(k, k, ids, cache)
    dk, dv = dequantize_kv(cache, ids, torch.float32)
    assert torch.equal(dk, k) and torch.equal(dv, k)
    assert (cache.k_scale[1] == 0).all()


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
