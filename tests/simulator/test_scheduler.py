"""The scheduler, driven directly (no SimPy): which request is preempted, where it re-queues,
what it reuses and recomputes, what the batch's attention is priced on, and the eviction order its
releases leave behind. Every expected value is worked out by hand in the comments."""

from __future__ import annotations

import pytest
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.cache import KVCache
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.policies import EVICTION
from kvsim.simulator.scheduler import DECODE, WAITING, Scheduler, Seq
from kvsim.traces import Request

BS = 16
UNIT = 64


def _setup(capacity, budget=64, layout="contiguous", prefix_caching=True):
    cache = KVCache(capacity, BS, EVICTION.create("lru", None), layout=layout,
                    prefix_caching=prefix_caching)  # fmt: skip
    finished = []
    sched = Scheduler(cache, budget, 8, budget, True,
                      on_finish=lambda s, now: finished.append((s.req.id, now)))  # fmt: skip
    return sched, finished


def _req(rid, prompt, output, ids=()):
    return Request(rid, 0.0, prompt, output, tuple(ids), UNIT)


def _step(sched, now):
    """One exact iteration starting at ``now`` (ending at now + 1); returns its batch."""
    sched.now_ns = now
    batch = sched.schedule()
    if batch is not None:
        sched.complete(batch, 1, now + 1)
    return batch


def test_preempt_newest_requeue_at_head_admission_stops_and_recompute_counted_once():
    """Capacity 6 blocks; A, B, C each 32 prompt tokens (2 blocks) and 40 output tokens.
    it 0: A and B prefill (the 64-token budget is full), C waits. it 1: both need a third block
    (token 33): 2 free, taken. Blocks are full again at 48 tokens: at it 17 both need one, none is
    free, so the newest running, B, is preempted (3 blocks back), A gets its block, and C is not
    admitted although 2 blocks are free: admission stops after a preemption. B re-queues ahead of
    C. B had computed positions 0..47; when it comes back it computes 49 tokens, of which 48 a
    second time (position 48, its 17th token, never had KV). A finishes at it 39; at it 40 B (49
    tokens, 4 blocks) and 15 of C's tokens (1 block) are admitted, at it 41 C's last 17 (1 block:
    none left); at it 42 C needs a block for its 33rd token and is itself the newest: preempted,
    it later computes its 32 prompt tokens a second time."""
    sched, finished = _setup(capacity=6)
    a, b, c = (Seq(_req(i, 32, 40), 0) for i in range(3))
    for s in (a, b, c):
        sched.add(s)
    batch = _step(sched, 0)
    assert [(s.req.id, n) for s, n in batch.prefills] == [(0, 32), (1, 32)]
    for it in range(1, 17):
        batch = _step(sched, 10 * it)
        assert batch.decodes == 2 and not batch.prefills and not batch.preempted
    assert sched.cache.free == 0 and list(sched.waiting) == [c]
    batch = _step(sched, 170)  # it 17
    assert batch.preempted and batch.decodes == 1 and not batch.prefills
    assert b.phase == WAITING and a.phase == DECODE
    assert list(sched.waiting) == [b, c]  # at the head, before the older waiting C
    assert (b.preemptions, b.computed, b.num_tokens) == (1, 0, 49)
    assert b.done_before == [(0, 48)] and sched.cache.free == 2
    now = 180
    while sched.has_work():
        _step(sched, now)
        now += 10
    assert finished == [(0, 391), (1, 621), (2, 1011)]
    assert (a.preemptions, b.preemptions, c.preemptions) == (0, 1, 1)
    assert (a.recomputed, b.recomputed, c.recomputed) == (0, 48, 32)
    assert b.generated == 40 and b.first_ns == 1  # its first token is still the first one


def test_admission_stops_after_a_preemption_even_if_the_head_fits():
    """Capacity 5, 16-token chunks: A and B prefill in two iterations (4 blocks); at it 2 both
    need a block for token 33 and one is free, so B (the newest) is preempted and frees 2. Its
    first 16-token chunk would fit the 2 free blocks, but admission waits for the next
    iteration: a preemption means the pool is short, and vLLM does not admit in that step."""
    cache = KVCache(5, BS, EVICTION.create("lru", None))
    sched = Scheduler(cache, 64, 8, 16, True)
    a, b = (Seq(_req(i, 32, 40), 0) for i in range(2))
    sched.add(a)
    sched.add(b)
    _step(sched, 0)
    _step(sched, 10)
    assert a.phase == b.phase == DECODE and cache.free == 1
    batch = _step(sched, 20)
    assert batch.preempted and batch.decodes == 1 and batch.prefills == []
    assert list(sched.waiting) == [b] and cache.free == 2
    batch = _step(sched, 30)
    assert [(s.req.id, n) for s, n in batch.prefills] == [(1, 16)]


def test_hit_tokens_chunked_commits_and_eviction_order_after_shared_prefixes():
    """X: 200 tokens = units 1, 2, 3 (64 each) and an 8-token unit 4 (no full block: never
    cached), prefilled in 64-token chunks; each unit becomes a node once its chunk is done. Y then
    reuses units 1 and 2 (128 tokens) and computes 22 more, whose full block (16 tokens) becomes
    node 5. Released tail first, LRU then evicts leaves by release time: 3 (X's), then 5, then 2
    (a leaf once 5 is gone), then the shared head 1."""
    sched, _ = _setup(capacity=40)
    x = Seq(_req(0, 200, 2, (1, 2, 3, 4)), 0)
    sched.add(x)
    nodes_after = []
    for it in range(4):
        batch = _step(sched, 10 * it)
        nodes_after.append((sorted(sched.cache.tree.nodes), x.priv_blocks))
    assert [n for _, n in batch.prefills] == [8]
    assert nodes_after == [([1], 0), ([1, 2], 0), ([1, 2, 3], 0), ([1, 2, 3], 1)]
    _step(sched, 40)  # its second token: X finishes and releases at t = 41
    assert not sched.has_work() and x.hit_tokens == 0
    y = Seq(_req(1, 150, 2, (1, 2, 5)), 50)
    sched.add(y)
    batch = _step(sched, 50)
    assert y.hit_tokens == 128 and y.hit_units == 2
    assert [n for _, n in batch.prefills] == [22]
    # 22 tokens after a 128-token context: pairs Σ_{p=128}^{149} (p + 1), one segment.
    assert (batch.kv_tokens, batch.qk_pairs, batch.segments) == (150, 22 * 128 + 253, 1)
    assert sched.cache.tree.nodes[5].tokens == 16 and y.priv_blocks == 1
    _step(sched, 60)
    assert not sched.has_work()
    cache = sched.cache
    cache.free = 0  # pool full of other requests' blocks: every node must go, in order
    victims = []
    while (v := cache.tree.pop_victim(100)) is not None:
        victims.append(v.id)
    assert victims == [3, 5, 2, 1]


def test_prefix_caching_off_reuses_nothing():
    sched, _ = _setup(capacity=40, prefix_caching=False)
    for i, ids in enumerate([(1, 2, 3), (1, 2, 5)]):
        s = Seq(_req(i, 150, 2, ids), 0)
        sched.add(s)
        while sched.has_work():
            _step(sched, 10)
        assert s.hit_tokens == 0 and s.hit_units == 0
    assert len(sched.cache.tree) == 0 and sched.cache.free == 40


def _cache_with_a_hole(sched):
    """Units 1, 2, 3, 4 (64 tokens each) cached, then unit 2 evicted (the others used later)."""
    cache = sched.cache
    s = Seq(_req(0, 4 * UNIT + 1, 2, (1, 2, 3, 4, 9)), 0)
    sched.add(s)
    while sched.has_work():
        _step(sched, 0)
    other = cache.lookup(_req(1, 4 * UNIT + 1, 1, (1, 98, 3, 4, 99)), 5)
    assert cache.try_allocate(0, 5, other)
    cache.release(list(other.nodes), 0, 6)
    taken = cache.free + 1
    cache.allocate(taken, 7)  # one node's worth: the LRU victim, unit 2
    cache.release([], taken, 7)
    assert sorted(cache.tree.nodes) == [1, 3, 4]


def test_msa_reuses_around_a_hole_and_recomputes_it():
    """Z = units 1, 2, 3, 4 and a 10-token unit 6, unit 2 evicted. msa reuses 1, 3 and 4 (192
    tokens) and computes the hole [64, 128) then the tail [256, 266). Chunk 1 is exactly the hole:
    its queries see every earlier position, so pairs = Σ_{p=64}^{127} (p + 1) = 6,176, it reads KV
    up to 128 in 2 segments (reused [0, 64), then the hole, computed into its own blocks). Chunk 2
    reads all four segments (two reused, the hole, the tail). The hole's unit becomes a node
    again. (Under contiguous no hole can arise: eviction takes leaves only.)"""
    sched, _ = _setup(capacity=60, layout="msa")
    _cache_with_a_hole(sched)
    z = Seq(_req(2, 4 * UNIT + 10, 2, (1, 2, 3, 4, 6)), 10)
    sched.add(z)
    b1 = _step(sched, 10)
    assert z.hit_tokens == 192 and z.hit_units == 3 and z.reused == ((0, 64), (128, 256))
    assert [n for _, n in b1.prefills] == [64]
    assert (b1.kv_tokens, b1.qk_pairs, b1.segments) == (128, 6176, 2)
    assert z.computed == 256 and z.ahead == 0  # past the hole and over the reused 3 and 4
    assert sorted(sched.cache.tree.nodes) == [1, 2, 3, 4] and z.segments == 4
    b2 = _step(sched, 20)
    assert [n for _, n in b2.prefills] == [10]
    assert (b2.kv_tokens, b2.qk_pairs, b2.segments) == (266, 10 * 256 + 55, 4)
    b3 = _step(sched, 30)  # its one decode reads the 4 segments
    assert (b3.decodes, b3.segments, b3.kv_tokens) == (1, 4, 267)
    assert not sched.has_work()


def test_msa_chunk_that_crosses_a_reused_range():
    """With 100-token chunks Z's first chunk takes the hole [64, 128) and then, past the reused
    units 3 and 4, the tail [256, 266) with 36 tokens to spare: its queries are 74 positions in
    two spans, pairs Σ_{p=64}^{127} (p+1) + Σ_{p=256}^{265} (p+1) = 6,176 + 2,615, and it reads all
    four segments. Prefill is then done: nothing reused is left ahead of the cursor."""
    cache = KVCache(60, BS, EVICTION.create("lru", None), layout="msa")
    sched = Scheduler(cache, 100, 8, 100, True)
    _cache_with_a_hole(sched)
    z = Seq(_req(2, 4 * UNIT + 10, 2, (1, 2, 3, 4, 6)), 10)
    sched.add(z)
    b1 = _step(sched, 10)
    assert [n for _, n in b1.prefills] == [74]
    assert (b1.kv_tokens, b1.qk_pairs, b1.segments, b1.logits) == (266, 6176 + 2615, 4, 1)
    assert (z.computed, z.ahead, z.next_range, z.phase) == (266, 0, 2, DECODE)
    sched.check_invariants()


def test_segments_of_ledgers():
    from kvsim.simulator.scheduler import _segments

    assert _segments((), 100, 100) == 1
    assert _segments(((0, 64),), 100, 100) == 1  # a prefix hit and its tail: one run
    assert _segments(((64, 128),), 200, 200) == 3  # hole, reused, tail
    assert _segments(((0, 64), (128, 192)), 300, 300) == 4
    assert _segments(((0, 64), (128, 192)), 300, 100) == 2  # a chunk ending inside the hole


@pytest.mark.parametrize("prompt", range(1, 2 * BS + 2))
def test_a_request_that_just_fits_runs_and_one_block_more_is_dropped(tmp_path, prompt):
    """The KV a request ever holds is its prompt and all its tokens but the last: with exactly
    that many blocks it runs to the end (every offset of a partial last block, with and without
    a cached unit); one block less and it is dropped with a reason, never left in flight."""
    output = 18
    blocks = -(-(prompt + output - 1) // BS)
    rows = [{"arrival_s": 0.0, "prompt_tokens": prompt, "output_tokens": output,
             "blocks": list(range(1, -(-prompt // UNIT) + 1)), "unit_tokens": UNIT}]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows * 2)
    for capacity, finished in ((blocks, 2), (blocks - 1, 0)):
        if capacity < 1:
            continue
        doc = scenario_doc(trace, cache={"num_gpu_blocks": capacity})
        res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
        assert res.summary["finished"] == finished, (prompt, capacity)


def test_a_unit_that_is_not_a_multiple_of_the_block_size_is_an_error(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 50, "output_tokens": 2, "blocks": [1, 2],
             "unit_tokens": 40}]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    with pytest.raises(KvsimError, match=r"t.jsonl: request 0: content unit of 40 tokens is not "
                                         r"a multiple of cache.block_size 16"):  # fmt: skip
        simulate(scenario_from_dict(scenario_doc(trace), base_dir=tmp_path))


def _shared_prefix_rows(n=120, seed=7):
    """Conversations over 6 documents: each request is a document's first k units plus its own
    units (chain ids: a document unit's id depends on the document and its index)."""
    import random

    rnd = random.Random(seed)
    rows, own = [], 10_000
    for i in range(n):
        doc, k, extra = rnd.randrange(6), rnd.randrange(0, 5), rnd.randrange(1, 4)
        ids = [doc * 100 + u for u in range(k)] + list(range(own, own + extra))
        own += extra
        tail = rnd.randrange(1, UNIT + 1)  # the last unit is partial
        rows.append({"arrival_s": 10.0 * i, "prompt_tokens": UNIT * (len(ids) - 1) + tail,
                     "output_tokens": 3, "blocks": ids, "unit_tokens": UNIT})  # fmt: skip
    return rows


def _own_ratio(rows):
    """Units whose (id, length) appeared before, counting units with a full block only."""
    seen, hits, units = set(), 0, 0
    for r in rows:
        for u, i in enumerate(r["blocks"]):
            length = min(UNIT, r["prompt_tokens"] - UNIT * u)
            units += 1
            hits += (i, length) in seen and length >= BS
            seen.add((i, length))
    return hits / units


@pytest.mark.parametrize("layout", ["contiguous", "msa"])
def test_prefix_hits_served_one_at_a_time_equal_the_traces_own(tmp_path, layout):
    """With a cache that never evicts and one request at a time, every unit seen before is a
    hit: the simulated prefix-hit ratio is the trace's own. With prefix caching off it is 0."""
    rows = _shared_prefix_rows()
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, cache={"num_gpu_blocks": 100_000, "layout": layout})
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    expected = _own_ratio(rows)
    assert 0.2 < expected < 0.6
    assert res.summary["prefix_hit_ratio"] == expected
    assert res.summary["evictions"] == 0
    doc["cache"]["enable_prefix_caching"] = False
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert res.summary["prefix_hit_ratio"] == 0.0 and res.summary["token_hit_ratio"] == 0.0


def test_v0_watermark_keeps_blocks_free_at_admission():
    """vLLM V1 admits a request when its first chunk's blocks fit; with a V0-style watermark of 2
    blocks it must also leave 2 available: with 10 blocks, a 128-token prompt (8 blocks) is admitted
    and a 144-token one (9 blocks) waits; running sequences still use the watermark's blocks."""
    for prompt, watermark, admitted in ((144, 0, True), (128, 2, True), (144, 2, False)):
        cache = KVCache(10, BS, EVICTION.create("lru", None))
        sched = Scheduler(cache, 256, 8, 256, True, watermark_blocks=watermark)
        s = Seq(_req(0, prompt, 30), 0)
        sched.add(s)
        batch = sched.schedule()
        assert (batch is not None) == admitted, (prompt, watermark)
        if admitted and watermark:
            sched.complete(batch, 1, 1)
            for it in range(2, 30):  # decoding past 144 tokens takes blocks 9 and 10
                sched.now_ns = it
                sched.complete(sched.schedule(), 1, it + 1)
            assert cache.free == 0 and s.preemptions == 0


def test_watermark_scenario_field(tmp_path):
    """``scheduler.watermark`` reaches the scheduler as blocks of the pool, and a prompt whose
    first chunk can never fit beside it is dropped with the reason (vLLM V0 rejected such a
    prompt), not left waiting forever."""
    rows = [{"arrival_s": 0.0, "prompt_tokens": p, "output_tokens": 2} for p in (128, 144)]
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, cache={"num_gpu_blocks": 10}, scheduler={"watermark": 0.2})
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert res.summary["finished"] == 1
    assert res.summary["drop_reasons"] == {
        "its first chunk does not fit beside the scheduler's watermark": 1
    }
    doc["scheduler"]["watermark"] = 0.0
    assert simulate(scenario_from_dict(doc, base_dir=tmp_path)).summary["finished"] == 2
