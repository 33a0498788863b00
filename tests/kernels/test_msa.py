"""MSA against gather-then-attend in float64: segments, holes, GQA, prefill and decode."""

from __future__ import annotations

import pytest
import torch

from kvsim.kernels.msa import gather_segments, msa_decode, msa_prefill, msa_reference

TOL = {torch.float16: 2e-3, torch.float32: 2e-5, torch.bfloat16: 2e-2}


def _layout(gen, ctx, n_segs, hole, page, lengths=None):
    """Split positions [0, ctx) into pieces, drop a hole (front/middle/end/none), and place each
    kept piece at a random slot range of a shuffled block table. Returns segments and the number
    of slots used."""
    if lengths is None:
        cuts = sorted(torch.randperm(ctx - 1, generator=gen)[: n_segs - 1].add(1).tolist())
        bounds = [0, *cuts, ctx]
        pieces = [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n_segs)]
    else:
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        pieces = list(zip(starts, lengths, strict=True))
    if hole == "front":
        pieces = pieces[1:] if len(pieces) > 1 else pieces
    elif hole == "middle" and len(pieces) > 2:
        pieces = pieces[:1] + pieces[2:]
    elif hole == "end" and len(pieces) > 1:
        pieces = pieces[:-1]
    order = torch.randperm(len(pieces), generator=gen).tolist()
    segs, slot = [None] * len(pieces), 0
    for i in order:  # slots in shuffled order: slot ≠ position
        pos, length = pieces[i]
        segs[i] = (slot, length, pos)
        slot += length
    return segs, slot


def _paged(gen, batch_segs, slots_needed, kv_heads, d, page, dtype, device):
    blocks_per = [-(-n // page) + 1 for n in slots_needed]
    num_blocks = sum(blocks_per) + 3
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.zeros(len(batch_segs), max(blocks_per), dtype=torch.int32)
    used = 0
    for b, nb in enumerate(blocks_per):
        table[b, :nb] = perm[used : used + nb].to(torch.int32)
        used += nb
    k = torch.randn(num_blocks, page, kv_heads, d, generator=gen).to(dtype)
    v = torch.randn(num_blocks, page, kv_heads, d, generator=gen).to(dtype)
    max_s = max(len(s) for s in batch_segs)
    seg = torch.zeros(len(batch_segs), max_s, 3, dtype=torch.int32)
    for b, segs in enumerate(batch_segs):
        if segs:
            seg[b, : len(segs)] = torch.tensor(segs, dtype=torch.int32)
    n = torch.tensor([len(s) for s in batch_segs], dtype=torch.int32)
    return [t.to(device) for t in (k, v, table, seg, n)]


def _check(out, lse, ref_out, ref_lse, dtype):
    ref_out = ref_out.to(out.device)
    ref_lse = ref_lse.to(out.device)
    assert not torch.isnan(out).any(), "an output row was not written"
    err = (out.double() - ref_out).abs().max().item()
    scale = max(1.0, ref_out.abs().max().item())
    assert err <= TOL[dtype] * scale * 4, f"max abs error {err}"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse[finite].double(), ref_lse[finite], atol=TOL[dtype] * 4, rtol=0)


CASES = [
    # (n_segs, hole, heads, kv_heads, page, d)
    (1, "none", 4, 4, 16, 32),
    (2, "front", 4, 1, 16, 32),
    (3, "middle", 8, 2, 8, 32),
    (4, "end", 8, 1, 16, 32),
    (5, "middle", 4, 4, 4, 16),
    (8, "front", 8, 1, 16, 32),
    (8, "none", 4, 2, 32, 64),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("n_segs, hole, heads, kv_heads, page, d", CASES)
def test_prefill_matches_reference(gen, device, dtype, n_segs, hole, heads, kv_heads, page, d):
    batch_segs, slots, q_lens, ctxs = [], [], [], []
    for b in range(3):
        ctx = int(torch.randint(40, 120, (1,), generator=gen)) + 10 * b
        segs, used = _layout(gen, ctx, n_segs, hole, page)
        batch_segs.append(segs)
        slots.append(used)
        ctxs.append(ctx)
        q_lens.append([1, 17, 33][b])
    k, v, table, seg, n = _paged(gen, batch_segs, slots, kv_heads, d, page, dtype, device)
    heads_q = torch.randn(sum(q_lens), heads, d, generator=gen).to(dtype).to(device)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    pos = torch.cat([torch.arange(c - ql, c) for c, ql in zip(ctxs, q_lens, strict=True)])
    out = torch.full_like(heads_q, float("nan"))
    got, lse = msa_prefill(
        heads_q, cu.to(device), pos.to(torch.int32).to(device), k, v, table, seg, n, out=out
    )
    assert got.data_ptr() == out.data_ptr()
    for b in range(3):
        rk, rv, rp = gather_segments(k, v, table[b], batch_segs[b])
        rows = slice(int(cu[b]), int(cu[b + 1]))
        ro, rl = msa_reference(heads_q[rows], pos[rows], rk, rv, rp)
        _check(got[rows], lse[rows], ro, rl, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("n_segs, hole, heads, kv_heads, page, d", CASES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_matches_reference(
    gen, device, dtype, n_segs, hole, heads, kv_heads, page, d, num_splits
):
    batch_segs, slots, ctxs = [], [], []
    for _ in range(3):
        ctx = int(torch.randint(30, 150, (1,), generator=gen))
        segs, used = _layout(gen, ctx, n_segs, hole, page)
        batch_segs.append(segs)
        slots.append(used)
        ctxs.append(ctx)
    k, v, table, seg, n = _paged(gen, batch_segs, slots, kv_heads, d, page, dtype, device)
    q = torch.randn(3, heads, d, generator=gen).to(dtype).to(device)
    pos = torch.tensor(ctxs, dtype=torch.int32) - 1
    out = torch.full_like(q, float("nan"))
    got, lse = msa_decode(q, pos.to(device), k, v, table, seg, n, num_splits=num_splits, out=out)
    for b in range(3):
        rk, rv, rp = gather_segments(k, v, table[b], batch_segs[b])
        ro, rl = msa_reference(q[b : b + 1], pos[b : b + 1], rk, rv, rp)
        _check(got[b : b + 1], lse[b : b + 1], ro, rl, dtype)


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_empty_and_single_token_segments(gen, device, mode):
    """Segments of length 0 and 1 among longer ones; a sequence whose only segment is empty."""
    dtype, page, d = torch.float32, 8, 32
    lens = [[5, 0, 1, 20, 0, 1], [0], [1]]
    batch_segs, slots = [], []
    for ls in lens:
        segs, used = _layout(gen, sum(ls), len(ls), "none", page, lengths=ls)
        batch_segs.append(segs)
        slots.append(used)
    k, v, table, seg, n = _paged(gen, batch_segs, slots, 2, d, page, dtype, device)
    ends = [sum(ls) for ls in lens]
    if mode == "decode":
        q = torch.randn(3, 4, d, generator=gen).to(device)
        pos = torch.tensor([e - 1 if e else 0 for e in ends], dtype=torch.int32)
        got, lse = msa_decode(q, pos.to(device), k, v, table, seg, n, num_splits=2)
        rows = [slice(b, b + 1) for b in range(3)]
    else:
        q_lens = [3, 1, 1]
        q = torch.randn(sum(q_lens), 4, d, generator=gen).to(device)
        cu = torch.tensor([0, 3, 4, 5], dtype=torch.int32)
        pos = torch.tensor([max(ends[0] - 3, 0), ends[0] - 2, ends[0] - 1, 0, 0], dtype=torch.int32)
        got, lse = msa_prefill(q, cu.to(device), pos.to(device), k, v, table, seg, n)
        rows = [slice(0, 3), slice(3, 4), slice(4, 5)]
    for b in range(3):
        rk, rv, rp = gather_segments(k, v, table[b], batch_segs[b])
        ro, rl = msa_reference(q[rows[b]], pos[rows[b]], rk, rv, rp)
        _check(got[rows[b]], lse[rows[b]], ro, rl, dtype)
    # The sequence with no keys at all: zeros and lse = -inf.
    assert torch.all(got[rows[1]] == 0) and torch.all(torch.isinf(lse[rows[1]]))


def test_segments_are_equivalent_to_one_contiguous_segment(gen, device):
    """Splitting a contiguous context into 6 segments changes nothing (the no-hole identity)."""
    dtype, page, d, ctx = torch.float32, 16, 32, 96
    one, used1 = [(0, ctx, 0)], ctx
    k, v, table, seg1, n1 = _paged(gen, [one], [used1], 2, d, page, dtype, device)
    six = [(i * 16, 16, i * 16) for i in range(6)]
    seg6 = torch.tensor([six], dtype=torch.int32).to(device)
    n6 = torch.tensor([6], dtype=torch.int32).to(device)
    q = torch.randn(8, 4, d, generator=gen).to(device)
    cu = torch.tensor([0, 8], dtype=torch.int32).to(device)
    pos = torch.arange(ctx - 8, ctx, dtype=torch.int32).to(device)
    a, la = msa_prefill(q, cu, pos, k, v, table, seg1, n1)
    b, lb = msa_prefill(q, cu, pos, k, v, table, seg6, n6)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(la, lb, atol=1e-5)


def test_wrapper_rejects_bad_inputs(device):
    k = torch.zeros(4, 16, 2, 32, device=device)
    table = torch.zeros(1, 4, dtype=torch.int32, device=device)
    seg = torch.zeros(1, 1, 3, dtype=torch.int32, device=device)
    n = torch.ones(1, dtype=torch.int32, device=device)
    q = torch.zeros(1, 4, 32, device=device)
    pos = torch.zeros(1, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="block_table must be int32"):
        msa_decode(q, pos, k, k, table.long(), seg, n)
    with pytest.raises(ValueError, match="share one of fp16/bf16/fp32"):
        msa_decode(q.half(), pos, k, k, table, seg, n)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        msa_decode(torch.zeros(1, 3, 32, device=device), pos, k, k, table, seg, n)
    with pytest.raises(ValueError, match=r"\[num_blocks, page, kv_heads, head_dim\]"):
        msa_decode(q, pos, k[0], k[0], table, seg, n)
    cu = torch.tensor([0, 1], dtype=torch.int32, device=device)
    for hint in (0, 1.5):
        with pytest.raises(ValueError, match="max_q_len must be a positive int"):
            msa_prefill(q, cu, pos, k, k, table, seg, n, max_q_len=hint)
    with pytest.raises(ValueError, match="q_pos must have one entry per query row"):
        msa_prefill(
            q,
            torch.tensor([0, 1], dtype=torch.int32, device=device),
            torch.zeros(2, dtype=torch.int32, device=device),
            k,
            k,
            table,
            seg,
            n,
        )


@pytest.mark.parametrize("hint", [True, False])
def test_decode_default_splits_with_and_without_length_hint(gen, device, hint):
    dtype, page, d = torch.float16, 16, 32
    batch_segs, slots, ctxs = [], [], []
    for ctx in (700, 333):
        segs, used = _layout(gen, ctx, 3, "middle", page)
        batch_segs.append(segs)
        slots.append(used)
        ctxs.append(ctx)
    k, v, table, seg, n = _paged(gen, batch_segs, slots, 2, d, page, dtype, device)
    q = torch.randn(2, 8, d, generator=gen).to(dtype).to(device)
    pos = torch.tensor(ctxs, dtype=torch.int32) - 1
    kv_max = max(sum(s[1] for s in segs) for segs in batch_segs)
    got, lse = msa_decode(
        q, pos.to(device), k, v, table, seg, n, max_kv_len=kv_max if hint else None
    )
    for b in range(2):
        rk, rv, rp = gather_segments(k, v, table[b], batch_segs[b])
        ro, rl = msa_reference(q[b : b + 1], pos[b : b + 1], rk, rv, rp)
        _check(got[b : b + 1], lse[b : b + 1], ro, rl, dtype)


# ---------------------------------------------------------------------------------------------
# AsymCache's chunks: recomputed holes and new tokens in one chunk, at every tile offset.
# ---------------------------------------------------------------------------------------------
# A sequence's context as pieces in position order: "c" = resident cached KV, "q" = tokens of the
# chunk (a recomputed hole or the new tokens), whose KV the engine writes before attention.
CHUNK_LAYOUTS = {
    "hole_then_new": [("c", 32), ("q", 21), ("c", 43), ("q", 38)],
    "two_holes": [("c", 16), ("q", 21), ("c", 38), ("q", 7), ("c", 9), ("q", 30)],
    "front_hole": [("q", 32), ("c", 32), ("q", 25)],
    "contiguous": [("c", 32), ("q", 40)],
}


def _chunk_case(gen, pieces, delta, merged, kv_heads, d, page, dtype):
    """Positions, KV and paged cache of one sequence whose first piece is ``delta`` tokens longer.

    ``merged``: one segment over the whole context (the holes' new blocks sit at their places in
    the block table); otherwise one segment per piece, in shuffled slot order. Slots no segment
    owns hold NaN, so a tile read past a segment's end poisons the output. Returns (query
    positions, per-position K and V, k_cache, v_cache, block table row, segments)."""
    lengths = [n + (delta if i == 0 else 0) for i, (_, n) in enumerate(pieces)]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    ctx = sum(lengths)
    q_pos = []
    for (kind, _), start, length in zip(pieces, starts, lengths, strict=True):
        if kind == "q":
            q_pos += range(start, start + length)
    runs = [(0, ctx)] if merged else list(zip(starts, lengths, strict=True))
    segs, slot = [None] * len(runs), 0
    for i in torch.randperm(len(runs), generator=gen).tolist():
        slot += 1 + int(torch.randint(page, (1,), generator=gen))  # a poisoned gap
        segs[i] = (slot, runs[i][1], runs[i][0])
        slot += runs[i][1]
    num_blocks = -(-slot // page) + 2
    table = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    k_pos = torch.randn(ctx, kv_heads, d, generator=gen).to(dtype)
    v_pos = torch.randn(ctx, kv_heads, d, generator=gen).to(dtype)
    k_cache = torch.full((num_blocks, page, kv_heads, d), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    for slot0, length, pos0 in segs:
        slots = torch.arange(slot0, slot0 + length)
        blk, off = table[slots // page].long(), slots % page
        k_cache[blk, off] = k_pos[pos0 : pos0 + length]
        v_cache[blk, off] = v_pos[pos0 : pos0 + length]
    return torch.tensor(q_pos, dtype=torch.int32), k_pos, v_pos, k_cache, v_cache, table, segs


def _reference_over_positions(q, q_pos, k_pos, v_pos, k_cache, v_cache, table, segs):
    """The float64 reference over the KV of every position 0 … ctx−1; first checks that the
    segments gathered through the block table are exactly that KV."""
    rk, rv, rp = gather_segments(k_cache, v_cache, table, segs)
    assert torch.equal(rk, k_pos[rp]) and torch.equal(rv, v_pos[rp])
    assert sorted(rp.tolist()) == list(range(k_pos.shape[0]))
    return msa_reference(q, q_pos, k_pos, v_pos, torch.arange(k_pos.shape[0]))


@pytest.mark.parametrize("delta", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("layout", sorted(CHUNK_LAYOUTS))
@pytest.mark.parametrize(
    "heads, kv_heads, block_m, block_n, order",
    [(2, 1, 16, 16, "sorted"), (4, 2, 16, 32, "shuffled"), (2, 1, 32, 16, "sorted")],
)
def test_prefill_chunk_of_holes_and_new_tokens(
    gen, device, delta, layout, heads, kv_heads, block_m, block_n, order
):
    """Two sequences in one launch, one with a segment per piece and one with a single merged
    segment. The chunk's query positions have gaps (holes, then new tokens); its first query (for
    a front hole: its first new token) lies at a key-tile boundary + ``delta``, and the pieces
    after it at other offsets."""
    dtype, d, page = torch.float32, 16, 8
    cases, qs = [], []
    for merged in (False, True):
        case = _chunk_case(gen, CHUNK_LAYOUTS[layout], delta, merged, kv_heads, d, page, dtype)
        q_pos = case[0]
        if order == "shuffled":  # rows need not be in position order
            q_pos = q_pos[torch.randperm(q_pos.numel(), generator=gen)]
        cases.append((q_pos, *case[1:]))
        qs.append(torch.randn(q_pos.numel(), heads, d, generator=gen).to(dtype))
    # Both sequences in one paged cache: the second's blocks follow the first's.
    nb0 = cases[0][3].shape[0]
    k_cache = torch.cat([cases[0][3], cases[1][3]])
    v_cache = torch.cat([cases[0][4], cases[1][4]])
    width = max(c[5].numel() for c in cases)
    table = torch.zeros(2, width, dtype=torch.int32)
    table[0, : cases[0][5].numel()] = cases[0][5]
    table[1, : cases[1][5].numel()] = cases[1][5] + nb0
    seg = torch.zeros(2, max(len(c[6]) for c in cases), 3, dtype=torch.int32)
    for b, c in enumerate(cases):
        seg[b, : len(c[6])] = torch.tensor(c[6], dtype=torch.int32)
    n = torch.tensor([len(c[6]) for c in cases], dtype=torch.int32)
    q = torch.cat(qs)
    q_pos = torch.cat([c[0] for c in cases])
    lens = [x.shape[0] for x in qs]
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32)
    out = torch.full_like(q, float("nan")).to(device)
    got, lse = msa_prefill(
        q.to(device), cu.to(device), q_pos.to(device), k_cache.to(device), v_cache.to(device),
        table.to(device), seg.to(device), n.to(device), max_q_len=max(lens), block_m=block_m,
        block_n=block_n, out=out,
    )  # fmt: skip
    for b, (qp, k_pos, v_pos, kc, vc, tb, segs) in enumerate(cases):
        ro, rl = _reference_over_positions(qs[b], qp, k_pos, v_pos, kc, vc, tb, segs)
        r = slice(int(cu[b]), int(cu[b + 1]))
        _check(got[r], lse[r], ro, rl, dtype)


@pytest.mark.parametrize("delta", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_sees_keys_up_to_its_position_at_tile_offsets(
    gen, device, delta, merged, num_splits
):
    """A decode query at tile boundary + ``delta`` with keys after it in the cache: it sees
    exactly the keys at or before its position (decode's whole-tile bound is by position)."""
    dtype, d, page, heads, kv_heads, block_n = torch.float32, 16, 8, 4, 1, 16
    pieces = [("c", 32), ("c", 13), ("c", 30), ("c", 20)]
    _, k_pos, v_pos, kc, vc, table, segs = _chunk_case(
        gen, pieces, 0, merged, kv_heads, d, page, dtype
    )
    positions = [block_n * 2 + delta, block_n * 4 + delta, k_pos.shape[0] - 1]
    q = torch.randn(len(positions), heads, d, generator=gen).to(dtype)
    q_pos = torch.tensor(positions, dtype=torch.int32)
    seg = torch.tensor([segs] * len(positions), dtype=torch.int32)
    n = torch.full((len(positions),), len(segs), dtype=torch.int32)
    tables = table[None].expand(len(positions), -1).contiguous()
    got, lse = msa_decode(
        q.to(device), q_pos.to(device), kc.to(device), vc.to(device), tables.to(device),
        seg.to(device), n.to(device), num_splits=num_splits, block_n=block_n,
        out=torch.full_like(q, float("nan")).to(device),
    )  # fmt: skip
    ro, rl = _reference_over_positions(q, q_pos, k_pos, v_pos, kc, vc, table, segs)
    _check(got, lse, ro, rl, dtype)


@pytest.mark.parametrize("hint", [None, "exact", "larger"])
def test_prefill_length_hint_changes_nothing(gen, device, hint):
    """max_q_len only sizes the grid: omitted (a device sync) or larger than the longest chunk,
    the result is the same as with the exact hint."""
    dtype, d, page = torch.float32, 16, 8
    q_pos, k_pos, v_pos, kc, vc, table, segs = _chunk_case(
        gen, CHUNK_LAYOUTS["hole_then_new"], 0, False, 1, d, page, dtype
    )
    q = torch.randn(q_pos.numel(), 2, d, generator=gen).to(dtype)
    cu = torch.tensor([0, q_pos.numel()], dtype=torch.int32)
    seg = torch.tensor([segs], dtype=torch.int32)
    n = torch.tensor([len(segs)], dtype=torch.int32)
    args = [t.to(device) for t in (q, cu, q_pos, kc, vc, table[None], seg, n)]
    exact, exact_lse = msa_prefill(*args, max_q_len=q_pos.numel())
    max_q_len = {None: None, "exact": q_pos.numel(), "larger": q_pos.numel() + 40}[hint]
    got, lse = msa_prefill(*args, max_q_len=max_q_len, out=torch.full_like(args[0], float("nan")))
    assert torch.equal(got, exact) and torch.equal(lse, exact_lse)
    ro, rl = _reference_over_positions(q, q_pos, k_pos, v_pos, kc, vc, table, segs)
    _check(got, lse, ro, rl, dtype)
