"""Chunked linear-recurrence scan of recurrent (SSM) layers and its single-token decode step.

The recurrence is Mamba-2's with a scalar decay per head and time (SSD, arXiv 2405.21060 §6):
    h_t = a_t · h_{t−1} + x_t ⊗ B_t,     y_t = h_t · C_t,     a_t = exp(log_a_t) ∈ (0, 1]
with state h [head_dim P, state N] per head, x [P], and B, C [N] shared by the heads of a group
(one group here). The scan works in chunks of L tokens: inside a chunk the output is a masked
(C Bᵀ ∘ decay) matmul plus the contribution of the incoming state; the state is carried from chunk
to chunk in registers, and the state at every chunk boundary is written out — those are exactly
the states a prefix cache can checkpoint (Sparse Prefix Caching, arXiv 2605.05219), and a scan
can start from any of them. States are float32. Natural-log decays throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .msa import _dot, interpreting


@triton.jit
def _ssm_scan_kernel(
    X, LOG_A, BM, CM, S0, Y, STATES,
    T,
    stride_xb, stride_xt, stride_xh,
    stride_ab, stride_at,
    stride_bb, stride_bt,
    stride_s0b, stride_s0h, stride_s0p,
    stride_sb, stride_sc, stride_sh, stride_sp,
    stride_yb, stride_yt, stride_yh,
    HAS_S0: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)
    i = tl.arange(0, CHUNK)
    if HAS_S0:
        state = tl.load(S0 + b * stride_s0b + h * stride_s0h + p[:, None] * stride_s0p + n[None, :])
    else:
        state = tl.zeros([BLOCK_P, N], tl.float32)
    causal = i[:, None] >= i[None, :]
    n_chunks = tl.cdiv(T, CHUNK)
    for c in range(0, n_chunks):
        t = c * CHUNK + i
        t_mask = t < T
        x = tl.load(
            X + b * stride_xb + t[:, None] * stride_xt + h * stride_xh + p[None, :],
            mask=t_mask[:, None],
            other=0.0,
        ).to(tl.float32)
        la = tl.load(LOG_A + b * stride_ab + t * stride_at + h, mask=t_mask, other=0.0)
        la = la.to(tl.float32)
        bm = tl.load(
            BM + b * stride_bb + t[:, None] * stride_bt + n[None, :],
            mask=t_mask[:, None],
            other=0.0,
        ).to(tl.float32)
        cm = tl.load(
            CM + b * stride_bb + t[:, None] * stride_bt + n[None, :],
            mask=t_mask[:, None],
            other=0.0,
        ).to(tl.float32)
        cs = tl.cumsum(la, 0)
        diff = tl.where(causal, cs[:, None] - cs[None, :], float("-inf"))
        m = _dot(cm, tl.trans(bm), IEEE) * tl.exp(diff)
        y = _dot(m, x, IEEE) + tl.exp(cs)[:, None] * _dot(cm, tl.trans(state), IEEE)
        tl.store(
            Y + b * stride_yb + t[:, None] * stride_yt + h * stride_yh + p[None, :],
            y.to(Y.dtype.element_ty),
            mask=t_mask[:, None],
        )
        last = tl.sum(la, 0)
        w = tl.exp(last - cs)
        state = tl.exp(last) * state + _dot(tl.trans(x * w[:, None]), bm, IEEE)
        tl.store(
            STATES
            + b * stride_sb
            + c * stride_sc
            + h * stride_sh
            + p[:, None] * stride_sp
            + n[None, :],
            state,
        )


@triton.jit
def _ssm_step_kernel(
    X, LOG_A, BM, CM, S, Y,
    stride_xb, stride_xh, stride_ab, stride_bb, stride_sb, stride_sh, stride_sp,
    stride_yb, stride_yh,
    P: tl.constexpr, N: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)
    ptr = S + b * stride_sb + h * stride_sh + p[:, None] * stride_sp + n[None, :]
    state = tl.load(ptr)
    x = tl.load(X + b * stride_xb + h * stride_xh + p).to(tl.float32)
    a = tl.exp(tl.load(LOG_A + b * stride_ab + h).to(tl.float32))
    bm = tl.load(BM + b * stride_bb + n).to(tl.float32)
    cm = tl.load(CM + b * stride_bb + n).to(tl.float32)
    state = a * state + x[:, None] * bm[None, :]
    tl.store(ptr, state)
    y = tl.sum(state * cm[None, :], 1)
    tl.store(Y + b * stride_yb + h * stride_yh + p, y.to(Y.dtype.element_ty))


def _check(x, log_a, bm, cm, state):
    if x.dim() != 4:
        raise ValueError(f"x must be [batch, tokens, heads, head_dim]; got {tuple(x.shape)}")
    bsz, t, heads, p = x.shape
    if log_a.shape != (bsz, t, heads):
        raise ValueError(
            f"log_a must be [batch, tokens, heads] = {(bsz, t, heads)}; got {tuple(log_a.shape)}"
        )
    if bm.dim() != 3 or bm.shape[:2] != (bsz, t) or cm.shape != bm.shape:
        raise ValueError(
            f"B and C must both be [batch, tokens, state] with batch {bsz} and "
            f"tokens {t}; got {tuple(bm.shape)} and {tuple(cm.shape)}"
        )
    n = bm.shape[2]
    for name, v in (("head_dim", p), ("state size", n)):
        if v & (v - 1) or v < 16:
            raise ValueError(f"{name} must be a power of two >= 16; got {v}")
    if state is not None and (state.shape != (bsz, heads, p, n) or state.dtype != torch.float32):
        raise ValueError(
            f"state must be float32 [batch, heads, head_dim, state] = "
            f"{(bsz, heads, p, n)}; got {tuple(state.shape)} {state.dtype}"
        )
    tensors = [x, log_a, bm, cm] + ([state] if state is not None else [])
    if len({v.device for v in tensors}) != 1:
        raise ValueError("all tensors must be on one device")
    if any(v.stride(-1) != 1 for v in tensors):
        raise ValueError("the last dimension of every tensor must be contiguous")
    return bsz, t, heads, p, n


def ssm_scan(
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill scan.

    Args:
        x: [batch, tokens, heads, head_dim]; log_a: [batch, tokens, heads] (≤ 0);
        b, c: [batch, tokens, state]; initial_state: float32 [batch, heads, head_dim, state].
        chunk: tokens per chunk (a power of two ≥ 16); states are returned at its boundaries.
    Returns:
        (y like x, chunk_states float32 [batch, ceil(tokens/chunk), heads, head_dim, state]);
        chunk_states[:, i] is the state after token min((i+1)·chunk, tokens) − 1.
    """
    bsz, t, heads, p, n = _check(x, log_a, b, c, initial_state)
    if chunk & (chunk - 1) or chunk < 16:
        raise ValueError(f"chunk must be a power of two >= 16; got {chunk}")
    y = torch.empty_like(x)
    n_chunks = triton.cdiv(t, chunk)
    states = torch.empty((bsz, n_chunks, heads, p, n), dtype=torch.float32, device=x.device)
    if t == 0:
        return y, states
    block_p = min(p, 16 if interpreting() else 64)
    s0 = initial_state if initial_state is not None else states  # unused when HAS_S0 is False
    _ssm_scan_kernel[(bsz, heads, p // block_p)](
        x, log_a, b, c, s0, y, states, t,
        x.stride(0), x.stride(1), x.stride(2),
        log_a.stride(0), log_a.stride(1),
        b.stride(0), b.stride(1),
        s0.stride(0), s0.stride(1) if initial_state is not None else 0,
        s0.stride(2) if initial_state is not None else 0,
        states.stride(0), states.stride(1), states.stride(2), states.stride(3),
        y.stride(0), y.stride(1), y.stride(2),
        HAS_S0=initial_state is not None, P=p, N=n, CHUNK=chunk, BLOCK_P=block_p,
        IEEE=x.dtype == torch.float32,
    )  # fmt: skip
    return y, states


def ssm_step(
    x: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """One decode token: updates ``state`` in place and returns y [batch, heads, head_dim].

    Args: x [batch, heads, head_dim], log_a [batch, heads], b and c [batch, state],
    state float32 [batch, heads, head_dim, state]."""
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, heads, head_dim]; got {tuple(x.shape)}")
    bsz, _, heads, p, n = _check(x[:, None], log_a[:, None], b[:, None], c[:, None], state)
    y = torch.empty_like(x)
    block_p = min(p, 16 if interpreting() else 64)
    _ssm_step_kernel[(bsz, heads, p // block_p)](
        x, log_a, b, c, state, y,
        x.stride(0), x.stride(1), log_a.stride(0), b.stride(0),
        state.stride(0), state.stride(1), state.stride(2),
        y.stride(0), y.stride(1),
        P=p, N=n, BLOCK_P=block_p,
    )  # fmt: skip
    return y


# ---------------------------------------------------------------------------------------------
def ssm_reference(x, log_a, b, c, initial_state=None):
    """Token-by-token recurrence in float64: (y, states after every token)."""
    bsz, t, heads, p = x.shape
    n = b.shape[-1]
    h = (initial_state.double().clone() if initial_state is not None
         else torch.zeros(bsz, heads, p, n, dtype=torch.float64, device=x.device))  # fmt: skip
    ys, states = [], []
    for i in range(t):
        a = log_a[:, i].double().exp()[:, :, None, None]
        h = a * h + x[:, i].double()[..., None] * b[:, i].double()[:, None, None, :]
        ys.append((h * c[:, i].double()[:, None, None, :]).sum(-1))
        states.append(h.clone())
    return torch.stack(ys, 1), torch.stack(states, 1)
