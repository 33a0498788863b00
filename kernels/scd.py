"""Semantic Cache Distillation (SCD) kernels: compact low-rank KV codes and their reconstruction.

SCD (arXiv 2606.07684) sends low-rank codes of a producer's KV cache instead of the raw cache.
Producer (``scd_encode``): the keys are rotated back to position-free form (inverse RoPE) and the
K and V rows of a layer are projected by per-layer encoders to ranks r_K and r_V. Consumer:
- *Reuse* (``scd_reuse``), most layers: codes × per-layer decoder → K/V, RoPE re-applied to K at the
  consumer's positions, written straight into the paged cache — one fused kernel.
- *Patch* (``scd_patch``), the sparse transition layers: a small aligner MLP maps a rank-r_H code
  to the layer's normalized attention input, which the consumer's own K/V projection turns into
  K/V (the same fused projection + RoPE + paged-write kernel, with rank = hidden size), so errors
  do not propagate through the consumer's layers.
Ranks for K, V and hidden are independent. RoPE is the rotate-half (GPT-NeoX/Llama) form with
inverse frequencies base^(−2i/D). Paged caches are ``[num_blocks, page, kv_heads, head_dim]`` and
rows are addressed by a slot mapping (slot = block · page + offset), as in vLLM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .msa import _dot, interpreting


@triton.jit
def _rope_cos_sin(pos, HALF: tl.constexpr, rope_log2_base):
    """cos and sin of pos · base^(−2i/D), i < D/2, as [BLOCK_T, HALF] tiles."""
    i = tl.arange(0, HALF).to(tl.float32)
    inv_freq = tl.exp2(-(2.0 * i / (2 * HALF)) * rope_log2_base)
    ang = pos.to(tl.float32)[:, None] * inv_freq[None, :]
    return tl.cos(ang), tl.sin(ang)


@triton.jit
def _scd_encode_kernel(
    X, POS, ENC, CODES, T, R, rope_log2_base,
    stride_xt, stride_xh, stride_er, stride_ct,
    KV_HEADS: tl.constexpr, D: tl.constexpr, ROPE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """codes[t, r] = Σ_h Σ_d derope(x)[t, h, d] · enc[h·D + d, r]  (ENC stored [KV_HEADS·D, R])."""
    pid_t = tl.program_id(0)
    pid_r = tl.program_id(1)
    HALF: tl.constexpr = D // 2
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < R
    j = tl.arange(0, HALF)
    acc = tl.zeros([BLOCK_T, BLOCK_R], tl.float32)
    if ROPE:
        pos = tl.load(POS + t, mask=t_mask, other=0)
        cos, sin = _rope_cos_sin(pos, HALF, rope_log2_base)
    for h in range(KV_HEADS):
        base = X + t[:, None] * stride_xt + h * stride_xh
        x1 = tl.load(base + j[None, :], mask=t_mask[:, None], other=0.0).to(tl.float32)
        x2 = tl.load(base + HALF + j[None, :], mask=t_mask[:, None], other=0.0).to(tl.float32)
        if ROPE:  # inverse rotation
            y1 = x1 * cos + x2 * sin
            y2 = x2 * cos - x1 * sin
        else:
            y1 = x1
            y2 = x2
        e1 = tl.load(
            ENC + (h * D + j)[:, None] * stride_er + r[None, :], mask=r_mask[None, :], other=0.0
        )
        e2 = tl.load(
            ENC + (h * D + HALF + j)[:, None] * stride_er + r[None, :],
            mask=r_mask[None, :],
            other=0.0,
        )
        acc += _dot(y1.to(e1.dtype), e1, IEEE)
        acc += _dot(y2.to(e2.dtype), e2, IEEE)
    tl.store(
        CODES + t[:, None] * stride_ct + r[None, :],
        acc.to(CODES.dtype.element_ty),
        mask=t_mask[:, None] & r_mask[None, :],
    )


@triton.jit
def _project_rope_write_kernel(
    CODES, DEC, POS, SLOTS, CACHE, T, R, rope_log2_base,
    stride_ct, stride_dr, stride_cb, stride_cs, stride_ch,
    D: tl.constexpr, PAGE: tl.constexpr, ROPE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """cache[slot[t], h] = rope(codes[t] @ dec[:, h·D:(h+1)·D]); DEC is [R, KV_HEADS·D]."""
    pid_t = tl.program_id(0)
    h = tl.program_id(1)
    HALF: tl.constexpr = D // 2
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    j = tl.arange(0, HALF)
    acc1 = tl.zeros([BLOCK_T, HALF], tl.float32)
    acc2 = tl.zeros([BLOCK_T, HALF], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < R
        c = tl.load(
            CODES + t[:, None] * stride_ct + r[None, :],
            mask=t_mask[:, None] & r_mask[None, :],
            other=0.0,
        )
        d1 = tl.load(
            DEC + r[:, None] * stride_dr + (h * D + j)[None, :], mask=r_mask[:, None], other=0.0
        )
        d2 = tl.load(
            DEC + r[:, None] * stride_dr + (h * D + HALF + j)[None, :],
            mask=r_mask[:, None],
            other=0.0,
        )
        acc1 += _dot(c, d1, IEEE)
        acc2 += _dot(c, d2, IEEE)
    if ROPE:
        pos = tl.load(POS + t, mask=t_mask, other=0)
        cos, sin = _rope_cos_sin(pos, HALF, rope_log2_base)
        out1 = acc1 * cos - acc2 * sin
        out2 = acc2 * cos + acc1 * sin
    else:
        out1 = acc1
        out2 = acc2
    slot = tl.load(SLOTS + t, mask=t_mask, other=0)
    dst = CACHE + (slot // PAGE)[:, None] * stride_cb + (slot % PAGE)[:, None] * stride_cs \
        + h * stride_ch  # fmt: skip
    ty = CACHE.dtype.element_ty
    tl.store(dst + j[None, :], out1.to(ty), mask=t_mask[:, None])
    tl.store(dst + HALF + j[None, :], out2.to(ty), mask=t_mask[:, None])


# ---------------------------------------------------------------------------------------------
def _blocks(r: int) -> tuple[int, int]:
    bt = 16 if interpreting() else 64
    br = 16 if interpreting() else min(64, max(16, triton.next_power_of_2(r)))
    return bt, br


def _check_rows(name, x, t, kv_heads=None, d=None):
    if x.dim() != 3 or x.shape[0] != t or (kv_heads and x.shape[1] != kv_heads):
        raise ValueError(f"{name} must be [tokens={t}, kv_heads, head_dim]; got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in head_dim")
    if d is not None and x.shape[2] != d:
        raise ValueError(f"{name} head_dim {x.shape[2]} != {d}")


def _check_head_dim(d: int):
    if d & (d - 1) or d < 32:
        raise ValueError(f"head_dim must be a power of two >= 32; got {d}")


def scd_encode(
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    enc_k: torch.Tensor,
    enc_v: torch.Tensor,
    rope_base: float = 500000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Producer: low-rank codes of one layer's K (de-RoPE'd) and V.

    Args:
        k, v: [tokens, kv_heads, head_dim] (k as stored, with RoPE). positions: int32 [tokens].
        enc_k: [kv_heads·head_dim, r_K]; enc_v: [kv_heads·head_dim, r_V] (same dtype as k).
    Returns:
        codes_k [tokens, r_K], codes_v [tokens, r_V] in k's dtype.
    """
    t, kvh, d = k.shape if k.dim() == 3 else (None, None, None)
    if t is None:
        raise ValueError(f"k must be [tokens, kv_heads, head_dim]; got {tuple(k.shape)}")
    _check_rows("k", k, t)
    _check_rows("v", v, t, kvh, d)
    _check_head_dim(d)
    for name, e in (("enc_k", enc_k), ("enc_v", enc_v)):
        if e.dim() != 2 or e.shape[0] != kvh * d or e.dtype != k.dtype or e.stride(1) != 1:
            raise ValueError(
                f"{name} must be a row-major [{kvh * d}, rank] {k.dtype} matrix; "
                f"got {tuple(e.shape)} {e.dtype}"
            )
    if positions.dtype != torch.int32 or positions.shape != (t,):
        raise ValueError("positions must be int32 [tokens]")
    if len({x.device for x in (k, v, positions, enc_k, enc_v)}) != 1:
        raise ValueError("all tensors must be on one device")
    outs = []
    for x, e, rope in ((k, enc_k, True), (v, enc_v, False)):
        r = e.shape[1]
        codes = torch.empty((t, r), dtype=k.dtype, device=k.device)
        bt, br = _blocks(r)
        if t:
            _scd_encode_kernel[(triton.cdiv(t, bt), triton.cdiv(r, br))](
                x, positions, e, codes, t, r, _log2(rope_base),
                x.stride(0), x.stride(1), e.stride(0), codes.stride(0),
                KV_HEADS=kvh, D=d, ROPE=rope, BLOCK_T=bt, BLOCK_R=br,
                IEEE=k.dtype == torch.float32,
            )  # fmt: skip
        outs.append(codes)
    return outs[0], outs[1]


def _log2(x: float) -> float:
    import math

    return math.log2(x)


def project_rope_write(
    codes: torch.Tensor,
    dec: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    cache: torch.Tensor,
    rope: bool,
    rope_base: float = 500000.0,
) -> None:
    """cache[slot[t]] = (rope if asked)(codes[t] @ dec), head by head, fused in one kernel."""
    if codes.dim() != 2 or dec.dim() != 2 or dec.shape[0] != codes.shape[1]:
        raise ValueError(
            f"codes [tokens, rank] and dec [rank, kv_heads·head_dim] disagree: "
            f"{tuple(codes.shape)} vs {tuple(dec.shape)}"
        )
    if cache.dim() != 4 or cache.stride(-1) != 1:
        raise ValueError("cache must be [num_blocks, page, kv_heads, head_dim], contiguous rows")
    _, page, kvh, d = cache.shape
    _check_head_dim(d)
    if dec.shape[1] != kvh * d:
        raise ValueError(
            f"dec has {dec.shape[1]} columns; the cache needs kv_heads·head_dim = {kvh * d}"
        )
    t, r = codes.shape
    if codes.dtype != dec.dtype or codes.stride(1) != 1 or dec.stride(1) != 1:
        raise ValueError("codes and dec must share a dtype and be row-major")
    if slot_mapping.dtype != torch.int32 or slot_mapping.shape != (t,):
        raise ValueError("slot_mapping must be int32 [tokens]")
    if positions.dtype != torch.int32 or positions.shape != (t,):
        raise ValueError("positions must be int32 [tokens]")
    if len({x.device for x in (codes, dec, positions, slot_mapping, cache)}) != 1:
        raise ValueError("all tensors must be on one device")
    if not t:
        return
    bt, br = _blocks(r)
    _project_rope_write_kernel[(triton.cdiv(t, bt), kvh)](
        codes, dec, positions, slot_mapping, cache, t, r, _log2(rope_base),
        codes.stride(0), dec.stride(0), cache.stride(0), cache.stride(1), cache.stride(2),
        D=d, PAGE=page, ROPE=rope, BLOCK_T=bt, BLOCK_R=br, IEEE=codes.dtype == torch.float32,
    )  # fmt: skip


def scd_reuse(
    codes_k: torch.Tensor,
    codes_v: torch.Tensor,
    dec_k: torch.Tensor,
    dec_v: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    rope_base: float = 500000.0,
) -> None:
    """Consumer Reuse: K = rope(codes_k @ dec_k), V = codes_v @ dec_v, written into the caches."""
    project_rope_write(codes_k, dec_k, positions, slot_mapping, k_cache, True, rope_base)
    project_rope_write(codes_v, dec_v, positions, slot_mapping, v_cache, False, rope_base)


def aligner_mlp(codes_h: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """The Patch aligner: rank-r_H code → normalized attention input (Linear, SiLU, Linear)."""
    hidden = torch.nn.functional.silu(codes_h @ w1 + b1)
    return hidden @ w2 + b2


def scd_patch(
    codes_h: torch.Tensor,
    aligner: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    rope_base: float = 500000.0,
) -> torch.Tensor:
    """Consumer Patch: aligner MLP (cuBLAS through torch) then the consumer's own K/V projection,
    RoPE and paged write (fused Triton kernel). Returns the predicted normalized input."""
    if codes_h.dim() != 2:
        raise ValueError(f"codes_h must be [tokens, r_H]; got {tuple(codes_h.shape)}")
    w1, b1, w2, b2 = aligner
    if w1.shape[0] != codes_h.shape[1] or w2.shape[1] != w_k.shape[0] or w_v.shape != w_k.shape:
        raise ValueError(
            f"aligner {tuple(w1.shape)}→{tuple(w2.shape)} does not map r_H={codes_h.shape[1]} to "
            f"the projection input {w_k.shape[0]}"
        )
    x = aligner_mlp(codes_h, w1, b1, w2, b2).contiguous()
    project_rope_write(x, w_k, positions, slot_mapping, k_cache, True, rope_base)
    project_rope_write(x, w_v, positions, slot_mapping, v_cache, False, rope_base)
    return x


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float, inverse=False):
    """Rotate-half RoPE of x [tokens, heads, D] at positions, in float64."""
    d = x.shape[-1]
    inv = base ** (-(2.0 * torch.arange(d // 2, dtype=torch.float64) / d))
    ang = positions.double().cpu()[:, None] * inv[None, :]
    cos, sin = ang.cos()[:, None, :].to(x.device), ang.sin()[:, None, :].to(x.device)
    x = x.double()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    if inverse:
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def scd_encode_reference(k, v, positions, enc_k, enc_v, rope_base=500000.0):
    t = k.shape[0]
    kd = rope_reference(k, positions, rope_base, inverse=True).reshape(t, -1)
    return kd @ enc_k.double(), v.double().reshape(t, -1) @ enc_v.double()


def project_reference(codes, dec, positions, kv_heads, rope, rope_base=500000.0):
    x = (codes.double() @ dec.double()).reshape(codes.shape[0], kv_heads, -1)
    return rope_reference(x, positions, rope_base) if rope else x
