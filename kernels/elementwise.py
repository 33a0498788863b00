"""The memory-bound elementwise passes of a transformer layer, as vLLM runs them fused.

- ``fused_add_rms_norm``: residual ← x + residual; y ← RMSNorm(residual) · weight (Zhang &
  Sennrich, "Root Mean Square Layer Normalization", arXiv 1910.07467). Reads x and the residual,
  writes both: 4 tensors of ``tokens × hidden``.
- ``rotary``: rotary position embedding of queries and keys in place, NeoX style (Su et al.,
  "RoFormer", arXiv 2104.09864 §3.4): reads and writes ``tokens × (heads + kv_heads) × head_dim``.
- ``silu_and_mul``: SwiGLU's activation, silu(gate) · up (Shazeer, arXiv 2002.05202): reads
  ``tokens × 2·inter``, writes ``tokens × inter``: 3 tensors of ``tokens × inter``.

The op vocabulary prices them as ``elementwise(tokens, width, tensors)``; calibration times these
kernels. Every kernel has a PyTorch reference (``*_reference``); fp32 accumulation throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(X, R, W, Y, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(X + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    s = x + r
    tl.store(R + row * hidden + cols, s.to(R.dtype.element_ty), mask=mask)
    var = tl.sum(s * s, 0) / hidden
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = s / tl.sqrt(var + eps) * w
    tl.store(Y + row * hidden + cols, y.to(Y.dtype.element_ty), mask=mask)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """residual += x (in place); return RMSNorm(residual) · weight (x, residual: [T, hidden])."""
    if x.shape != residual.shape or x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"shapes x {tuple(x.shape)}, residual {tuple(residual.shape)}, "
                         f"weight {tuple(weight.shape)}: expected [T, H], [T, H], [H]")  # fmt: skip
    if not (x.is_contiguous() and residual.is_contiguous()):
        raise ValueError("x and residual must be contiguous")
    y = torch.empty_like(x)
    hidden = x.shape[1]
    _add_rms_norm_kernel[(x.shape[0],)](x, residual, weight, y, hidden, eps,
                                        BLOCK=triton.next_power_of_2(hidden))  # fmt: skip
    return y


def fused_add_rms_norm_reference(x, residual, weight, eps: float = 1e-6):
    """(normalized output, new residual) computed in float64."""
    s = x.double() + residual.double()
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    return y, s


@triton.jit
def _rotary_kernel(QK, POS, cos_sin, heads, head_dim, HALF: tl.constexpr):
    tok = tl.program_id(0)
    h = tl.program_id(1)
    i = tl.arange(0, HALF)
    pos = tl.load(POS + tok)
    cos = tl.load(cos_sin + pos * 2 * HALF + i)
    sin = tl.load(cos_sin + pos * 2 * HALF + HALF + i)
    base = QK + (tok * heads + h) * head_dim
    a = tl.load(base + i).to(tl.float32)
    b = tl.load(base + HALF + i).to(tl.float32)
    tl.store(base + i, (a * cos - b * sin).to(QK.dtype.element_ty))
    tl.store(base + HALF + i, (b * cos + a * sin).to(QK.dtype.element_ty))


def rope_cache(max_pos: int, head_dim: int, base: float = 10000.0, device="cpu") -> torch.Tensor:
    """[max_pos, head_dim] float32: cos of the head_dim/2 frequencies, then their sin."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([ang.cos(), ang.sin()], dim=1).float().to(device)


def rotary(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``qk`` [tokens, heads, head_dim] in place by its tokens' ``positions``."""
    if qk.dim() != 3 or qk.shape[2] % 2 or positions.shape != (qk.shape[0],):
        raise ValueError(f"qk {tuple(qk.shape)}, positions {tuple(positions.shape)}: expected "
                         "[T, heads, even head_dim] and [T]")  # fmt: skip
    if cos_sin.shape[1] != qk.shape[2] or not qk.is_contiguous():
        raise ValueError("cos_sin must be [max_pos, head_dim] and qk contiguous")
    t, heads, d = qk.shape
    if t:
        _rotary_kernel[(t, heads)](qk, positions, cos_sin, heads, d, HALF=d // 2)
    return qk


def rotary_reference(qk, positions, cos_sin):
    """NeoX rotation in float64: the first and second halves of each head are the pairs."""
    half = qk.shape[2] // 2
    cs = cos_sin.double()[positions.long()]
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    a, b = qk.double()[..., :half], qk.double()[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


@triton.jit
def _silu_mul_kernel(GU, OUT, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < inter
    g = tl.load(GU + row * 2 * inter + col, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * 2 * inter + inter + col, mask=mask, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(OUT + row * inter + col, y.to(OUT.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """silu(gate) · up for ``gate_up`` [tokens, 2·inter] (gate first, as vLLM lays it out)."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 or not gate_up.is_contiguous():
        raise ValueError(f"gate_up {tuple(gate_up.shape)}: expected contiguous [T, 2·inter]")
    t, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(t, inter, dtype=gate_up.dtype, device=gate_up.device)
    if t:
        _silu_mul_kernel[(t, triton.cdiv(inter, block))](gate_up, out, inter, BLOCK=block)
    return out


def silu_and_mul_reference(gate_up):
    g, u = gate_up.double().chunk(2, dim=-1)
    return g * torch.sigmoid(g) * u
