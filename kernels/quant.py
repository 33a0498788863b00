"""Group-wise asymmetric KV-cache quantization at 8, 4 and 2 bits, KIVI-style (arXiv 2402.02750).

Keys have outlier *channels*, so they are quantized per channel, over the tokens of one cache page
(one scale and zero per page × kv head × channel); values are quantized per token, over groups of
``group`` channels (one scale and zero per token × kv head × group). Codes are
round((x − min) / scale) with scale = (max − min) / (2^bits − 1), and 8/bits codes are packed into
each byte along the channel axis, lowest bits first.

Paged layout: packed codes ``[num_blocks, page, kv_heads, head_dim·bits/8]`` uint8; key scales and
zeros ``[num_blocks, kv_heads, head_dim]`` float32; value scales and zeros
``[num_blocks, page, kv_heads, head_dim/group]`` float32. ``quantize_kv`` fills whole pages (the
producer quantizes a finished page); ``dequantize_kv`` reads pages by block id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def _pack(codes, ROWS: tl.constexpr, COLS: tl.constexpr, BITS: tl.constexpr):
    """[ROWS, COLS] codes → [ROWS, COLS·BITS/8] bytes, lowest bits first."""
    PER: tl.constexpr = 8 // BITS
    c = tl.reshape(codes, (ROWS, COLS // PER, PER))
    shift = (tl.arange(0, PER) * BITS).to(tl.int32)
    return tl.sum(c << shift[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def _unpack(packed, ROWS: tl.constexpr, COLS: tl.constexpr, BITS: tl.constexpr):
    PER: tl.constexpr = 8 // BITS
    shift = (tl.arange(0, PER) * BITS).to(tl.int32)
    c = (packed.to(tl.int32)[:, :, None] >> shift[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(c, (ROWS, COLS))


@triton.jit
def _quant_kernel(
    K, V, BLOCK_IDS, KQ, KS, KZ, VQ, VS, VZ,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kqb, stride_kqs, stride_kqh, stride_ksb, stride_ksh,
    stride_vqb, stride_vqs, stride_vqh, stride_vsb, stride_vss, stride_vsh,
    PAGE: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)  # the i-th page of input tokens
    h = tl.program_id(1)
    blk = tl.load(BLOCK_IDS + i)
    s = tl.arange(0, PAGE)
    d = tl.arange(0, D)
    PACKED: tl.constexpr = D * BITS // 8
    p = tl.arange(0, PACKED)
    LEVELS: tl.constexpr = (1 << BITS) - 1
    # Keys: per channel over the page's tokens.
    k = tl.load(K + (i * PAGE + s)[:, None] * stride_kt + h * stride_kh + d[None, :]).to(tl.float32)
    kmin = tl.min(k, 0)
    kscale = tl.div_rn(tl.max(k, 0) - kmin, tl.zeros_like(kmin) + LEVELS)
    # NOTE: div_rn is IEEE round-to-nearest; plain `/` is approximate on GPUs and would move
    # values on a rounding boundary to the neighbouring code.
    kc = tl.floor(tl.div_rn(k - kmin[None, :], tl.where(kscale > 0, kscale, 1.0)[None, :]) + 0.5)
    kc = tl.minimum(tl.maximum(kc, 0.0), LEVELS).to(tl.int32)
    tl.store(
        KQ + blk * stride_kqb + s[:, None] * stride_kqs + h * stride_kqh + p[None, :],
        _pack(kc, PAGE, D, BITS),
    )
    tl.store(KS + blk * stride_ksb + h * stride_ksh + d, kscale)
    tl.store(KZ + blk * stride_ksb + h * stride_ksh + d, kmin)
    # Values: per token over groups of GROUP channels.
    NG: tl.constexpr = D // GROUP
    v = tl.load(V + (i * PAGE + s)[:, None] * stride_vt + h * stride_vh + d[None, :]).to(tl.float32)
    vg = tl.reshape(v, (PAGE, NG, GROUP))
    vmin = tl.min(vg, 2)
    vscale = tl.div_rn(tl.max(vg, 2) - vmin, tl.zeros_like(vmin) + LEVELS)
    vc = tl.floor(
        tl.div_rn(vg - vmin[:, :, None], tl.where(vscale > 0, vscale, 1.0)[:, :, None]) + 0.5
    )
    vc = tl.reshape(tl.minimum(tl.maximum(vc, 0.0), LEVELS).to(tl.int32), (PAGE, D))
    tl.store(
        VQ + blk * stride_vqb + s[:, None] * stride_vqs + h * stride_vqh + p[None, :],
        _pack(vc, PAGE, D, BITS),
    )
    g = tl.arange(0, NG)
    dst = blk * stride_vsb + s[:, None] * stride_vss + h * stride_vsh + g[None, :]
    tl.store(VS + dst, vscale)
    tl.store(VZ + dst, vmin)


@triton.jit
def _dequant_kernel(
    BLOCK_IDS, KQ, KS, KZ, VQ, VS, VZ, K, V,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kqb, stride_kqs, stride_kqh, stride_ksb, stride_ksh,
    stride_vqb, stride_vqs, stride_vqh, stride_vsb, stride_vss, stride_vsh,
    PAGE: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.load(BLOCK_IDS + i)
    s = tl.arange(0, PAGE)
    d = tl.arange(0, D)
    PACKED: tl.constexpr = D * BITS // 8
    p = tl.arange(0, PACKED)
    kp = tl.load(KQ + blk * stride_kqb + s[:, None] * stride_kqs + h * stride_kqh + p[None, :])
    kc = _unpack(kp, PAGE, D, BITS).to(tl.float32)
    ks = tl.load(KS + blk * stride_ksb + h * stride_ksh + d)
    kz = tl.load(KZ + blk * stride_ksb + h * stride_ksh + d)
    k = kc * ks[None, :] + kz[None, :]
    tl.store(
        K + (i * PAGE + s)[:, None] * stride_kt + h * stride_kh + d[None, :],
        k.to(K.dtype.element_ty),
    )
    NG: tl.constexpr = D // GROUP
    vp = tl.load(VQ + blk * stride_vqb + s[:, None] * stride_vqs + h * stride_vqh + p[None, :])
    vc = tl.reshape(_unpack(vp, PAGE, D, BITS).to(tl.float32), (PAGE, NG, GROUP))
    g = tl.arange(0, NG)
    src = blk * stride_vsb + s[:, None] * stride_vss + h * stride_vsh + g[None, :]
    vs = tl.load(VS + src)
    vz = tl.load(VZ + src)
    v = tl.reshape(vc * vs[:, :, None] + vz[:, :, None], (PAGE, D))
    tl.store(
        V + (i * PAGE + s)[:, None] * stride_vt + h * stride_vh + d[None, :],
        v.to(V.dtype.element_ty),
    )


@dataclass
class QuantizedKVCache:
    """A paged, quantized KV cache (see the module docstring for the layout)."""

    k_codes: torch.Tensor
    k_scale: torch.Tensor
    k_zero: torch.Tensor
    v_codes: torch.Tensor
    v_scale: torch.Tensor
    v_zero: torch.Tensor
    bits: int
    group: int

    @classmethod
    def empty(cls, num_blocks, page, kv_heads, head_dim, bits, group=32, device="cpu"):
        if bits not in (2, 4, 8):
            raise ValueError(f"bits must be 2, 4 or 8; got {bits}")
        if head_dim % group or group & (group - 1) or head_dim & (head_dim - 1):
            raise ValueError(
                f"group ({group}) and head_dim ({head_dim}) must be powers of two, "
                "group dividing head_dim"
            )
        if page & (page - 1):
            raise ValueError(f"page must be a power of two; got {page}")
        f32 = {"dtype": torch.float32, "device": device}
        packed = head_dim * bits // 8
        return cls(
            torch.zeros(num_blocks, page, kv_heads, packed, dtype=torch.uint8, device=device),
            torch.zeros(num_blocks, kv_heads, head_dim, **f32),
            torch.zeros(num_blocks, kv_heads, head_dim, **f32),
            torch.zeros(num_blocks, page, kv_heads, packed, dtype=torch.uint8, device=device),
            torch.zeros(num_blocks, page, kv_heads, head_dim // group, **f32),
            torch.zeros(num_blocks, page, kv_heads, head_dim // group, **f32),
            bits,
            group,
        )

    @property
    def page(self) -> int:
        return self.k_codes.shape[1]

    @property
    def head_dim(self) -> int:
        return self.k_scale.shape[2]

    def _args(self):
        kq, ks, vq, vs = self.k_codes, self.k_scale, self.v_codes, self.v_scale
        return (kq.stride(0), kq.stride(1), kq.stride(2), ks.stride(0), ks.stride(1),
                vq.stride(0), vq.stride(1), vq.stride(2), vs.stride(0), vs.stride(1),
                vs.stride(2))  # fmt: skip


def _check(cache: QuantizedKVCache, k, v, block_ids):
    page, kvh, d = cache.page, cache.k_codes.shape[2], cache.head_dim
    if k.shape != v.shape or k.dim() != 3 or k.shape[1:] != (kvh, d) or k.shape[0] % page:
        raise ValueError(
            f"k and v must be [pages·{page}, {kvh}, {d}]; got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if block_ids.dtype != torch.int32 or block_ids.shape != (k.shape[0] // page,):
        raise ValueError(f"block_ids must be int32 [{k.shape[0] // page}] (one per page)")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v must be contiguous in head_dim")
    if len({t.device for t in (k, v, block_ids, cache.k_codes)}) != 1:
        raise ValueError("all tensors must be on one device")


def quantize_kv(
    k: torch.Tensor, v: torch.Tensor, block_ids: torch.Tensor, cache: QuantizedKVCache
) -> None:
    """Quantize whole pages of K and V [pages·page, kv_heads, head_dim] into ``cache`` at the
    given block ids."""
    _check(cache, k, v, block_ids)
    n = block_ids.numel()
    if n:
        _quant_kernel[(n, k.shape[1])](
            k, v, block_ids, cache.k_codes, cache.k_scale, cache.k_zero,
            cache.v_codes, cache.v_scale, cache.v_zero,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), *cache._args(),
            PAGE=cache.page, D=cache.head_dim, BITS=cache.bits, GROUP=cache.group,
        )  # fmt: skip


def dequantize_kv(
    cache: QuantizedKVCache, block_ids: torch.Tensor, dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the pages ``block_ids``, as [pages·page, kv_heads, head_dim] of ``dtype``."""
    n = block_ids.numel()
    kvh, d = cache.k_codes.shape[2], cache.head_dim
    dev = cache.k_codes.device
    k = torch.empty(n * cache.page, kvh, d, dtype=dtype, device=dev)
    v = torch.empty_like(k)
    _check(cache, k, v, block_ids)
    if n:
        _dequant_kernel[(n, kvh)](
            block_ids, cache.k_codes, cache.k_scale, cache.k_zero,
            cache.v_codes, cache.v_scale, cache.v_zero, k, v,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), *cache._args(),
            PAGE=cache.page, D=d, BITS=cache.bits, GROUP=cache.group,
        )  # fmt: skip
    return k, v


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def quantize_reference(x: torch.Tensor, bits: int, dim: int):
    """Asymmetric quantization of float32 x along ``dim``: (codes, scale, zero)."""
    x = x.float()
    levels = (1 << bits) - 1
    mn = x.amin(dim, keepdim=True)
    # NOTE: divide by a tensor: PyTorch turns division by a Python scalar into multiplication by
    # its reciprocal on CUDA, which is not IEEE division and moves codes on rounding boundaries.
    scale = (x.amax(dim, keepdim=True) - mn) / torch.full_like(mn, levels)
    codes = torch.floor((x - mn) / torch.where(scale > 0, scale, torch.ones_like(scale)) + 0.5)
    return codes.clamp(0, levels).to(torch.int32), scale, mn


def kv_reference(k, v, page, bits, group):
    """Reference codes and dequantized K, V for whole pages, as the kernels lay them out."""
    t, kvh, d = k.shape
    kk = k.float().reshape(t // page, page, kvh, d)
    kc, ks, kz = quantize_reference(kk, bits, dim=1)
    vv = v.float().reshape(t, kvh, d // group, group)
    vc, vs, vz = quantize_reference(vv, bits, dim=3)
    k_hat = (kc * ks + kz).reshape(t, kvh, d)
    v_hat = (vc * vs + vz).reshape(t, kvh, d)
    return kc.reshape(t, kvh, d), vc.reshape(t, kvh, d), k_hat, v_hat, ks, vs


def unpack_reference(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device) * bits
    codes = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)
