"""Multi-Segment Attention (MSA): attention over non-contiguous KV segments of a paged cache.

AsymCache (arXiv 2606.02964) evicts cheap early KV blocks, so a request's cached KV becomes a set of
non-contiguous segments; the holes are recomputed with the new tokens. MSA attends each query over
all segments in one launch: the keys and values of every segment are read through the sequence's
block table, masked causally by absolute position, and folded into a single online-softmax
accumulator (FlashAttention-2, arXiv 2307.08691) — no launch per segment and no merge pass.

A segment is ``(slot_start, length, pos_start)``: KV slots ``slot_start … slot_start+length-1`` of
the sequence's block table hold the tokens at absolute positions ``pos_start …``. A query at
position p sees a key at position k iff k ≤ p. Queries carry their own positions, so a chunk may mix
recomputed holes and new tokens.

Variants: ``msa_prefill`` (a chunk of queries per sequence, variable lengths, packed) and
``msa_decode`` (one query per sequence; the KV of each sequence is split across programs for long
contexts, flash-decoding style, then combined by a small reduction kernel; the query heads sharing
a KV head are processed together so each KV tile is loaded once per group). GQA throughout. The
log-sum-exp returned is in natural log. Layout: ``k_cache, v_cache: [num_blocks, page, kv_heads,
head_dim]`` (vLLM's flash layout).
"""

from __future__ import annotations

import math
import numbers

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """A matrix product; IEEE fp32 arithmetic for fp32 inputs (Triton defaults to tf32)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _attend_tile(
    q, qp, acc, m_i, l_i, K, V, blk, off, cols, col_mask, kpos, kvh, d, qk_scale,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    MASK: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Fold one tile of keys into the online-softmax state (FlashAttention-2 update, base 2).

    NOTE: tiles wholly below the causal diagonal and inside their segment take MASK=False: no
    position compare, no -inf guard, no predicated loads (the FlashAttention split of
    off-diagonal and diagonal tiles)."""
    kv_off = blk[:, None] * stride_kb + off[:, None] * stride_ks + kvh * stride_kh + d[None, :]
    if MASK:
        k = tl.load(K + kv_off, mask=col_mask[:, None], other=0.0)
    else:
        k = tl.load(K + kv_off)
    qk = _dot(q, tl.trans(k), IEEE) * qk_scale
    if MASK:
        valid = col_mask[None, :] & (kpos[None, :] <= qp[:, None])
        qk = tl.where(valid, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    if MASK:
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_safe = m_new
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v_off = blk[:, None] * stride_vb + off[:, None] * stride_vs + kvh * stride_vh + d[None, :]
    if MASK:
        v = tl.load(V + v_off, mask=col_mask[:, None], other=0.0)
    else:
        v = tl.load(V + v_off)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


# ---------------------------------------------------------------------------------------------
# Prefill: a chunk of queries per sequence.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _msa_prefill_kernel(
    Q, K, V, O, LSE,
    cu_q, q_pos, block_table, seg, n_segs,
    qk_scale,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh,
    stride_bt, stride_sb,
    GROUP: tl.constexpr, PAGE: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # NOTE: query tiles are taken last-first: under a causal mask later tiles see more keys, so
    # the heaviest programs start first and the tail of the grid is short.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start = tl.load(cu_q + b)
    q_len = tl.load(cu_q + b + 1) - q_start
    if pid_m * BLOCK_M >= q_len:
        return
    kvh = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    d = tl.arange(0, D)
    q = tl.load(
        Q + (q_start + rows)[:, None] * stride_qt + h * stride_qh + d[None, :],
        mask=row_mask[:, None],
        other=0.0,
    )
    qp = tl.load(q_pos + q_start + rows, mask=row_mask, other=-1)
    # NOTE: the block's positions need not be contiguous nor sorted (recomputed holes and new
    # tokens share a chunk), so the tile bounds below use the least and the greatest position of
    # the block's valid rows; padding rows (past the chunk's end) are left out of both.
    q_min = tl.min(tl.where(row_mask, qp, 2147483647), 0)
    q_max = tl.max(tl.where(row_mask, qp, -1), 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    nseg = tl.load(n_segs + b)
    for s in range(0, nseg):
        slot0 = tl.load(seg + b * stride_sb + s * 3)
        length = tl.load(seg + b * stride_sb + s * 3 + 1)
        pos0 = tl.load(seg + b * stride_sb + s * 3 + 2)
        # NOTE: two branch-free loops, so that Triton can software-pipeline the loads. Tile t
        # holds the keys at pos0 + t·BLOCK_N … pos0 + (t+1)·BLOCK_N − 1.
        # - Unmasked, tiles t < n_full: wholly inside the segment ((t+1)·BLOCK_N ≤ length) and
        #   seen whole by every row, i.e. the tile's last key ≤ q_min, the block's least position.
        # - Masked, tiles n_full ≤ t < n_end: up to the tile that holds the last key the block's
        #   greatest position q_max sees (its first key ≤ q_max), and not past the segment.
        # Tiles after that are never visited; rows that see none of a tile get it masked out.
        n_full = tl.minimum(length // BLOCK_N, tl.maximum(q_min - pos0 + 1, 0) // BLOCK_N)
        n_end = tl.minimum(
            tl.cdiv(length, BLOCK_N), tl.maximum(q_max - pos0 + BLOCK_N, 0) // BLOCK_N
        )
        for start in range(0, n_full * BLOCK_N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            slots = slot0 + cols
            blk = tl.load(block_table + b * stride_bt + slots // PAGE)
            acc, m_i, l_i = _attend_tile(
                q, qp, acc, m_i, l_i, K, V, blk, slots % PAGE, cols, cols < length, pos0 + cols,
                kvh, d, qk_scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
                stride_vh, False, IEEE,
            )  # fmt: skip
        for start in range(n_full * BLOCK_N, n_end * BLOCK_N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_mask = cols < length
            slots = slot0 + cols
            blk = tl.load(block_table + b * stride_bt + slots // PAGE, mask=col_mask, other=0)
            acc, m_i, l_i = _attend_tile(
                q, qp, acc, m_i, l_i, K, V, blk, slots % PAGE, cols, col_mask, pos0 + cols,
                kvh, d, qk_scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
                stride_vh, True, IEEE,
            )  # fmt: skip
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(
        O + (q_start + rows)[:, None] * stride_ot + h * stride_oh + d[None, :],
        out.to(O.dtype.element_ty),
        mask=row_mask[:, None],
    )
    lse = tl.where(
        has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf")
    )
    tl.store(LSE + (q_start + rows) * tl.num_programs(2) + h, lse, mask=row_mask)


# ---------------------------------------------------------------------------------------------
# Decode: one query per sequence, KV split across programs, query heads of a group together.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _msa_decode_split_kernel(
    Q, K, V, MID_O, MID_LSE,
    q_pos, block_table, seg, n_segs,
    qk_scale,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt, stride_sb,
    NUM_SPLITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
    PAGE: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    H = tl.num_programs(1) * GROUP
    g = tl.arange(0, BLOCK_G)
    g_mask = g < GROUP
    heads = kvh * GROUP + g
    d = tl.arange(0, D)
    q = tl.load(
        Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None],
        other=0.0,
    )
    qp_s = tl.load(q_pos + b)
    qp = tl.zeros([BLOCK_G], tl.int32) + qp_s
    nseg = tl.load(n_segs + b)
    total = 0
    for s in range(0, nseg):
        total += tl.load(seg + b * stride_sb + s * 3 + 1)
    per_split = tl.cdiv(tl.cdiv(total, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, total)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    c0 = 0  # start of segment s in the concatenation of all segments
    for s in range(0, nseg):
        slot0 = tl.load(seg + b * stride_sb + s * 3)
        length = tl.load(seg + b * stride_sb + s * 3 + 1)
        pos0 = tl.load(seg + b * stride_sb + s * 3 + 2)
        a = tl.maximum(c0, lo)
        e = tl.minimum(c0 + length, hi)
        # Branch-free loops as in prefill over this split's part [a, e) of the segment, in the
        # concatenation's coordinates (key c is at position pos0 + c − c0): unmasked, the whole
        # tiles of keys at positions ≤ q_pos; masked, the rest of [a, e).
        n_full = tl.maximum(tl.minimum(e - a, qp_s - pos0 + c0 + 1 - a), 0) // BLOCK_N
        for start in range(a, a + n_full * BLOCK_N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            rel = cols - c0
            slots = slot0 + rel
            blk = tl.load(block_table + b * stride_bt + slots // PAGE)
            acc, m_i, l_i = _attend_tile(
                q, qp, acc, m_i, l_i, K, V, blk, slots % PAGE, cols, cols < e, pos0 + rel, kvh,
                d, qk_scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                False, IEEE,
            )  # fmt: skip
        for start in range(a + n_full * BLOCK_N, e, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_mask = cols < e
            rel = cols - c0
            slots = slot0 + rel
            blk = tl.load(block_table + b * stride_bt + slots // PAGE, mask=col_mask, other=0)
            acc, m_i, l_i = _attend_tile(
                q, qp, acc, m_i, l_i, K, V, blk, slots % PAGE, cols, col_mask, pos0 + rel, kvh,
                d, qk_scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                True, IEEE,
            )  # fmt: skip
        c0 += length
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse2 = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    base = (b * H + heads) * NUM_SPLITS + split
    tl.store(MID_O + base[:, None] * D + d[None, :], out, mask=g_mask[:, None])
    tl.store(MID_LSE + base, lse2, mask=g_mask)


@triton.jit
def _msa_decode_reduce_kernel(
    MID_O, MID_LSE, O, LSE, stride_ob, stride_oh,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    s = tl.arange(0, BLOCK_S)
    s_mask = s < NUM_SPLITS
    d = tl.arange(0, D)
    base = (b * H + h) * NUM_SPLITS
    lse2 = tl.load(MID_LSE + base + s, mask=s_mask, other=float("-inf"))
    m = tl.max(lse2, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse2 - m_safe)
    total = tl.sum(w, 0)
    parts = tl.load(MID_O + (base + s)[:, None] * D + d[None, :], mask=s_mask[:, None], other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(O + b * stride_ob + h * stride_oh + d, out.to(O.dtype.element_ty))
    safe_total = tl.where(total > 0, total, 1.0)
    lse = tl.where(total > 0, (m_safe + tl.log2(safe_total)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + b * H + h, lse)


# ---------------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------------
def _check_cache(k_cache, v_cache, block_table, segments, n_segs, batch):
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache and v_cache must both be [num_blocks, page, kv_heads, head_dim]; got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in head_dim")
    if block_table.dtype != torch.int32 or block_table.dim() != 2 or block_table.shape[0] != batch:
        raise ValueError(f"block_table must be int32 [batch={batch}, max_blocks]")
    if segments.dtype != torch.int32 or segments.dim() != 3 or segments.shape[0] != batch:
        raise ValueError(f"segments must be int32 [batch={batch}, max_segments, 3]")
    if segments.shape[2] != 3:
        raise ValueError("segments[..., :] must be (slot_start, length, pos_start)")
    if n_segs.dtype != torch.int32 or n_segs.shape != (batch,):
        raise ValueError(f"n_segments must be int32 [batch={batch}]")
    devices = {t.device for t in (k_cache, v_cache, block_table, segments, n_segs)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device; got {sorted(map(str, devices))}")
    d = k_cache.shape[-1]
    if d & (d - 1) or d < 16:
        raise ValueError(f"head_dim must be a power of two >= 16; got {d}")


def _check_q(q: torch.Tensor, k_cache: torch.Tensor) -> int:
    """Check q against the cache (dtype, GQA ratio, head_dim); return the KV head count."""
    heads, d = q.shape[1], q.shape[2]
    kv_heads = k_cache.shape[2]
    if q.dtype != k_cache.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"q and the caches must share one of fp16/bf16/fp32; got {q.dtype}, {k_cache.dtype}"
        )
    if d != k_cache.shape[3] or heads % kv_heads:
        raise ValueError(
            f"q heads {heads} must be a multiple of kv_heads {kv_heads}; head_dim "
            f"{d} must equal the cache's {k_cache.shape[3]}"
        )
    return kv_heads


def _out_like(q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}")
    if out.stride() != q.stride():
        raise ValueError("out must have q's strides")
    return out


def msa_prefill(
    q: torch.Tensor,
    cu_q: torch.Tensor,
    q_pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    segments: torch.Tensor,
    n_segments: torch.Tensor,
    sm_scale: float | None = None,
    max_q_len: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of packed query chunks over segmented paged KV.

    Args:
        q: [total_q, heads, head_dim], fp16/bf16/fp32; sequence b owns rows cu_q[b]:cu_q[b+1].
        cu_q: int32 [batch + 1] row offsets. q_pos: int32 [total_q] absolute positions.
        k_cache, v_cache: [num_blocks, page, kv_heads, head_dim], same dtype as q.
        block_table: int32 [batch, max_blocks]. segments: int32 [batch, max_segs, 3].
        n_segments: int32 [batch], segments used per sequence.
        max_q_len: at least the longest query chunk; it sizes the grid, so rows past it would not
            be computed (computed on the device, a synchronization, if omitted).
    Returns:
        (out [total_q, heads, head_dim] in q's dtype, lse [total_q, heads] float32, natural log).
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [total_q, heads, head_dim]; got {tuple(q.shape)}")
    batch = cu_q.numel() - 1
    _check_cache(k_cache, v_cache, block_table, segments, n_segments, batch)
    total_q, heads, d = q.shape
    kv_heads = _check_q(q, k_cache)
    if cu_q.dtype != torch.int32 or q_pos.dtype != torch.int32 or q_pos.shape != (total_q,):
        raise ValueError("cu_q and q_pos must be int32; q_pos must have one entry per query row")
    if q.device != k_cache.device or cu_q.device != q.device or q_pos.device != q.device:
        raise ValueError("q, cu_q, q_pos and the caches must be on one device")
    if q.stride(-1) != 1:
        q = q.contiguous()
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    out = _out_like(q, out)
    lse = torch.empty((total_q, heads), dtype=torch.float32, device=q.device)
    if total_q == 0:
        return out, lse
    if max_q_len is None:  # NOTE: a device-to-host sync; engines pass max_q_len
        max_q_len = int((cu_q[1:] - cu_q[:-1]).max().item())
    elif (
        isinstance(max_q_len, bool) or not isinstance(max_q_len, numbers.Integral) or max_q_len < 1
    ):
        raise ValueError(f"max_q_len must be a positive int; got {max_q_len!r}")
    lens = int(max_q_len)
    interp = interpreting()
    # Defaults measured best on an H100 for head_dim 128 (benchmarks/results/kernels_h100.md).
    bm = block_m or (16 if interp else 128)
    bn = block_n or (16 if interp else 128)
    extra = {} if interp else {"num_warps": num_warps or 8, "num_stages": num_stages or 3}
    grid = (triton.cdiv(lens, bm), batch, heads)
    _msa_prefill_kernel[grid](
        q, k_cache, v_cache, out, lse,
        cu_q, q_pos, block_table, segments, n_segments,
        sm_scale * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1),
        block_table.stride(0), segments.stride(0),
        GROUP=heads // kv_heads, PAGE=k_cache.shape[1], D=d, BLOCK_M=bm, BLOCK_N=bn,
        IEEE=q.dtype == torch.float32, **extra,
    )  # fmt: skip
    return out, lse


def default_num_splits(batch: int, kv_heads: int, max_kv: int, sms: int = 132) -> int:
    """About eight programs per SM (decode is latency-bound: many loads in flight hide it), but
    at least 256 keys a split and at most 128 splits (measured on an H100, see
    benchmarks/results/)."""
    want = max(1, -(-8 * sms // max(1, batch * kv_heads)))
    return int(max(1, min(want, -(-max_kv // 256), 128)))


def msa_decode(
    q: torch.Tensor,
    q_pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    segments: torch.Tensor,
    n_segments: torch.Tensor,
    sm_scale: float | None = None,
    max_kv_len: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query token per sequence over segmented paged KV (split-KV).

    Args:
        q: [batch, heads, head_dim]. q_pos: int32 [batch]. Other arguments as in ``msa_prefill``.
        max_kv_len: the longest sequence's KV length (total over its segments), used to choose
            the number of splits; computed on the device (a synchronization) if omitted.
    Returns:
        (out [batch, heads, head_dim] in q's dtype, lse [batch, heads] float32, natural log).
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [batch, heads, head_dim]; got {tuple(q.shape)}")
    batch, heads, d = q.shape
    _check_cache(k_cache, v_cache, block_table, segments, n_segments, batch)
    kv_heads = _check_q(q, k_cache)
    if q_pos.dtype != torch.int32 or q_pos.shape != (batch,) or q_pos.device != q.device:
        raise ValueError("q_pos must be int32 [batch] on q's device")
    if q.device != k_cache.device:
        raise ValueError("q and the caches must be on one device")
    if q.stride(-1) != 1:
        q = q.contiguous()
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    interp = interpreting()
    if num_splits is None:
        if max_kv_len is None:  # NOTE: a device-to-host sync; engines pass max_kv_len
            idx = torch.arange(segments.shape[1], device=q.device)[None, :]
            used = idx < n_segments[:, None].long()
            max_kv_len = int((segments[:, :, 1].long() * used).sum(1).max().item())
        sms = 132 if interp else torch.cuda.get_device_properties(q.device).multi_processor_count
        num_splits = default_num_splits(batch, kv_heads, max_kv_len, sms)
    group = heads // kv_heads
    block_g = max(16, triton.next_power_of_2(group))
    bn = block_n or (16 if interp else 128)
    mid_o = torch.empty((batch, heads, num_splits, d), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, heads, num_splits), dtype=torch.float32, device=q.device)
    extra = {} if interp else {"num_warps": num_warps or 4, "num_stages": num_stages or 2}
    _msa_decode_split_kernel[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, mid_o, mid_lse,
        q_pos, block_table, segments, n_segments,
        sm_scale * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_table.stride(0), segments.stride(0),
        NUM_SPLITS=num_splits, GROUP=group, BLOCK_G=block_g, PAGE=k_cache.shape[1], D=d,
        BLOCK_N=bn, IEEE=q.dtype == torch.float32, **extra,
    )  # fmt: skip
    out = _out_like(q, out)
    lse = torch.empty((batch, heads), dtype=torch.float32, device=q.device)
    _msa_decode_reduce_kernel[(batch, heads)](
        mid_o, mid_lse, out, lse, out.stride(0), out.stride(1),
        NUM_SPLITS=num_splits, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), D=d,
    )  # fmt: skip
    return out, lse


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def gather_segments(k_cache, v_cache, block_table_row, segs) -> tuple:
    """K, V and positions of a sequence's segments, gathered through its block table."""
    page = k_cache.shape[1]
    ks, vs, ps = [], [], []
    for slot0, length, pos0 in segs:
        if length == 0:
            continue
        slots = torch.arange(slot0, slot0 + length, device=k_cache.device)
        blk = block_table_row[slots // page].long()
        off = slots % page
        ks.append(k_cache[blk, off])
        vs.append(v_cache[blk, off])
        ps.append(torch.arange(pos0, pos0 + length, device=k_cache.device))
    if not ks:
        shape = (0, k_cache.shape[2], k_cache.shape[3])
        empty = k_cache.new_zeros(shape)
        return empty, empty, torch.zeros(0, dtype=torch.long, device=k_cache.device)
    return torch.cat(ks), torch.cat(vs), torch.cat(ps)


def msa_reference(q, q_pos, k, v, kv_pos, sm_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention of q [n, H, D] over gathered k, v [m, KVH, D] in float64, causal by position.

    Rows with no visible key give zeros and lse = -inf."""
    n, heads, d = q.shape
    kvh = k.shape[1]
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    qf = q.double()
    kf = k.double().repeat_interleave(heads // kvh, dim=1)
    vf = v.double().repeat_interleave(heads // kvh, dim=1)
    s = torch.einsum("nhd,mhd->hnm", qf, kf) * sm_scale
    visible = kv_pos.to(q.device)[None, :].long() <= q_pos.to(q.device)[:, None].long()
    s = s.masked_fill(~visible[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.where(torch.isfinite(lse)[..., None], torch.exp(s - lse[..., None]), 0.0)
    p = torch.nan_to_num(p)
    out = torch.einsum("hnm,mhd->nhd", p, vf)
    return out, lse.transpose(0, 1)
