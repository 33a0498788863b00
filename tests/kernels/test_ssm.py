"""SSM scan and step against the token-by-token recurrence; resuming from chunk states."""

from __future__ import annotations

import pytest
import torch

from kvsim.kernels.ssm import ssm_reference, ssm_scan, ssm_step

TOL = {torch.float16: 2e-2, torch.float32: 1e-4}


def _inputs(gen, bsz, t, heads, p, n, dtype, device):
    x = torch.randn(bsz, t, heads, p, generator=gen)
    log_a = -torch.rand(bsz, t, heads, generator=gen) * 0.5  # decays in (0.6, 1]
    b = torch.randn(bsz, t, n, generator=gen) / n**0.5
    c = torch.randn(bsz, t, n, generator=gen) / n**0.5
    return [v.to(dtype).to(device) if v is not log_a else v.to(device) for v in (x, log_a, b, c)]


def _close(a, ref, dtype):
    ref = ref.to(a.device)
    err = (a.double() - ref).abs().max().item() / max(1.0, ref.abs().max().item())
    assert err < TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(
    "bsz, t, heads, p, n, chunk",
    [(2, 40, 2, 16, 16, 16), (1, 64, 3, 32, 32, 32), (1, 1, 1, 16, 16, 16)],
)
def test_scan_matches_recurrence(gen, device, dtype, bsz, t, heads, p, n, chunk):
    x, log_a, b, c = _inputs(gen, bsz, t, heads, p, n, dtype, device)
    y, states = ssm_scan(x, log_a, b, c, chunk=chunk)
    ry, rstates = ssm_reference(x, log_a, b, c)
    _close(y, ry, dtype)
    ends = [min((i + 1) * chunk, t) - 1 for i in range(states.shape[1])]
    _close(states, rstates[:, ends], dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_scan_resumed_from_a_chunk_state_equals_the_uninterrupted_scan(gen, device, dtype):
    x, log_a, b, c = _inputs(gen, 2, 90, 2, 16, 32, dtype, device)
    chunk = 16
    y, states = ssm_scan(x, log_a, b, c, chunk=chunk)
    for k in (1, 3):
        cut = k * chunk
        y2, states2 = ssm_scan(
            x[:, cut:],
            log_a[:, cut:],
            b[:, cut:],
            c[:, cut:],
            initial_state=states[:, k - 1].contiguous(),
            chunk=chunk,
        )
        _close(y2, y[:, cut:].double(), dtype)
        _close(states2[:, -1], states[:, -1].double(), dtype)


def test_step_continues_a_scan(gen, device):
    dtype = torch.float32
    x, log_a, b, c = _inputs(gen, 2, 20, 2, 16, 16, dtype, device)
    _, states = ssm_scan(x[:, :16], log_a[:, :16], b[:, :16], c[:, :16], chunk=16)
    state = states[:, -1].contiguous()
    ry, _ = ssm_reference(x, log_a, b, c)
    for i in range(16, 20):
        y = ssm_step(
            x[:, i].contiguous(),
            log_a[:, i].contiguous(),
            b[:, i].contiguous(),
            c[:, i].contiguous(),
            state,
        )
        _close(y, ry[:, i], dtype)


def test_bad_shapes(device):
    x = torch.zeros(1, 8, 2, 16, device=device)
    la = torch.zeros(1, 8, 2, device=device)
    bm = torch.zeros(1, 8, 16, device=device)
    with pytest.raises(ValueError, match="log_a must be"):
        ssm_scan(x, la[:, :4], bm, bm)
    with pytest.raises(ValueError, match="state size must be a power of two"):
        ssm_scan(x, la, bm[..., :12], bm[..., :12])
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        ssm_scan(x, la, bm, bm, chunk=24)
