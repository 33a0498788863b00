"""The KV cache and prefix tree, driven directly: lookups, allocation, and the exact order in
which nodes are evicted (in the style of vLLM's prefix-caching tests: the order of victims is
asserted, not only their number)."""

from __future__ import annotations

import pytest

from kvsim.simulator.cache import KVCache
from kvsim.simulator.cache.kv_cache import NO_HIT
from kvsim.simulator.policies import EVICTION
from kvsim.simulator.policies.eviction import EvictionContext
from kvsim.traces import Request

BS = 16  # tokens per block
UNIT = 64  # tokens per content unit: 4 blocks


def _cache(policy="lru", capacity=1000, layout="contiguous", **kw) -> KVCache:
    ctx = EvictionContext(BS, layout, None, lambda start, tokens: 0.0)
    pol = EVICTION.create(policy, ctx) if isinstance(policy, str) else policy
    return KVCache(capacity, BS, pol, layout=layout, **kw)


class _Req:
    """Stands in for one request holding nodes, as the scheduler would."""

    def __init__(self, cache: KVCache, ids, prompt_tokens=None):
        self.cache = cache
        self.ids = list(ids)
        self.prompt = prompt_tokens or UNIT * len(self.ids)
        self.nodes = []

    def request(self) -> Request:
        return Request(0, 0.0, self.prompt, 1, tuple(self.ids), UNIT)

    def compute(self, now, hit=NO_HIT):
        """Take ``hit``, then compute and commit every other unit at ``now``."""
        held = {n.depth: n for n in hit.nodes}
        assert self.cache.try_allocate(0, now, hit)
        self.nodes = list(hit.nodes)
        parent = None
        for u, i in enumerate(self.ids):
            if u in held:
                parent = held[u]
                continue
            length = min(UNIT, self.prompt - u * UNIT)
            self.cache.allocate(self.cache.blocks_for(length), now)
            node, _ = self.cache.commit_unit(i, parent, u, u * UNIT, length, now)
            if node is None:
                continue  # (its private blocks are not modelled here)
            self.nodes.append(node)  # its private blocks became the node's
            parent = node
        return self

    def release(self, now):
        self.cache.release(self.nodes, 0, now)
        self.nodes = []


def _victims(cache: KVCache, now=10**9) -> list[int]:
    out = []
    while (v := cache.tree.pop_victim(now)) is not None:
        out.append(v.id)
        cache.free += v.blocks
    return out


def test_lru_touches_on_release_so_a_prefix_goes_tail_first():
    """A prefix hit at t=1 and units inserted at t=5: stamped at acquire, the hit head would be
    the least recent and go first, orphaning its tail. Touched at release, the chain shares one
    time and goes tail first (vLLM frees a sequence's blocks tail first)."""
    c = _cache("lru")
    _Req(c, [1], UNIT + 1).compute(now=0).release(now=1)  # node 1 cached, free
    a = _Req(c, [1, 2, 3])
    a.compute(now=5, hit=c.lookup(a.request(), 5))
    _Req(c, [9]).compute(now=10).release(now=10)  # released before the chain
    a.release(now=20)
    assert _victims(c) == [9, 3, 2, 1]


def test_contiguous_evicts_leaves_only_whatever_the_policy():
    """FIFO ranks the head of a chain first (created first); under contiguous the tree still
    evicts leaves first, so no node leaves while a deeper node of its chain is resident. Under
    msa, FIFO's own order stands."""
    for layout, expected in (("contiguous", [3, 2, 1]), ("msa", [1, 2, 3])):
        c = _cache("fifo", layout=layout)
        r = _Req(c, [1, 2, 3])
        for now, ids in ((1, [1]), (2, [1, 2]), (3, [1, 2, 3])):  # one unit inserted per step
            r.ids = ids
            r.compute(now, c.lookup(Request(0, 0.0, UNIT * len(ids) + 1, 1, tuple(ids), UNIT), 0))
            r.release(now)
        assert _victims(c) == expected, layout


def test_shared_prefix_eviction_order():
    """Two chains share unit 1: A = 1-2-3 released at t=10, B = 1-4 at t=20. Leaves go first by
    LRU: 3, then 2 (now a leaf), then B's 4, then the shared head."""
    c = _cache("lru")
    a = _Req(c, [1, 2, 3]).compute(now=1)
    b = _Req(c, [1, 4])
    b.compute(now=2, hit=c.lookup(Request(0, 0.0, 2 * UNIT, 1, (1, 4), UNIT), 2))
    a.release(now=10)
    b.release(now=20)
    assert c.tree.nodes[1].children == 2
    assert _victims(c) == [3, 2, 4, 1]


def test_lookup_with_a_hole():
    """Units 1..4 cached, unit 2 evicted (msa: any free node may go). contiguous reuses unit 1
    only; msa reuses 1, 3 and 4, and 2 becomes a hole between two reused ranges."""
    req = Request(0, 0.0, 4 * UNIT + 10, 1, (1, 2, 3, 4, 5), UNIT)
    c = _cache("lru", layout="msa")
    _Req(c, [1, 2, 3, 4]).compute(now=1).release(now=2)
    # Units 1, 3 and 4 are used again later (a lookup that skips unit 2): 2 is the LRU victim.
    other = c.lookup(Request(0, 0.0, 4 * UNIT + 1, 1, (1, 98, 3, 4, 99), UNIT), 5)
    assert c.try_allocate(0, 5, other)
    c.release(list(other.nodes), 0, 6)
    c.allocate(c.free + 1, 7)  # evicts exactly one node's worth: unit 2
    assert sorted(c.tree.nodes) == [1, 3, 4]
    hit = c.lookup(req, 4)
    assert [n.id for n in hit.nodes] == [1, 3, 4]
    assert hit.ranges == ((0, UNIT), (2 * UNIT, 4 * UNIT))
    assert (hit.tokens, hit.units, hit.pinned_blocks) == (3 * UNIT, 3, 12)
    # The same residents seen through a contiguous match stop at the hole.
    c.layout = "contiguous"
    hit = c.lookup(req, 4)
    assert [n.id for n in hit.nodes] == [1] and hit.ranges == ((0, UNIT),)


def test_the_last_token_is_always_computed():
    """A fully cached prompt gives up its last unit (its logits need a forward pass); a longer
    sequence (after a preemption in decode) does not need to."""
    c = _cache("lru")
    _Req(c, [1, 2]).compute(now=1).release(now=2)
    req = Request(0, 0.0, 2 * UNIT, 1, (1, 2), UNIT)
    hit = c.lookup(req, 3)
    assert [n.id for n in hit.nodes] == [1] and hit.units == 2 and hit.tokens == UNIT
    hit = c.lookup(req, 3, tokens=2 * UNIT + 5)
    assert [n.id for n in hit.nodes] == [1, 2] and hit.tokens == 2 * UNIT


def test_a_partial_unit_caches_its_full_blocks_only():
    """A last unit of 40 tokens holds 2 full blocks (32 tokens); its last 8 tokens stay private,
    and a later prompt with the same unit reuses the 32 and computes the 8. A unit of another
    length under the same id never matches; a unit shorter than a block is not cached."""
    c = _cache("lru")
    r = _Req(c, [1, 2], UNIT + 40).compute(now=1)
    assert c.tree.nodes[2].tokens == 32 and c.tree.nodes[2].blocks == 2
    r.release(now=2)
    same = Request(0, 0.0, UNIT + 40, 1, (1, 2), UNIT)
    assert c.lookup(same, 3).tokens == UNIT + 32
    longer = Request(0, 0.0, 2 * UNIT, 1, (1, 2), UNIT)  # unit 2 has 64 tokens here
    assert [n.id for n in c.lookup(longer, 3).nodes] == [1]
    node, freed = c.commit_unit(2, c.tree.nodes[1], 1, UNIT, UNIT, 4)
    assert node is None and freed == 0  # conflicting length: stays private
    node, freed = c.commit_unit(7, None, 0, 0, BS - 1, 4)
    assert node is None and 7 not in c.tree.nodes


def test_commit_shares_a_unit_another_request_inserted():
    c = _cache("lru", capacity=100)
    a = _Req(c, [1]).compute(now=1)
    c.allocate(4, 2)  # B computed the same unit meanwhile: 4 private blocks
    free = c.free
    node, freed = c.commit_unit(1, None, 0, 0, UNIT, now_ns=3)
    assert node is a.nodes[0] and node.refs == 2 and freed == 4
    assert c.free == free + 4  # B's copy is given back


def test_try_allocate_checks_and_allocates_together():
    """It fails without side effects when the hit's own free blocks would be counted twice, and
    otherwise takes the hit and evicts only what it needs, in policy order."""
    c = _cache("lru", capacity=12)
    _Req(c, [1]).compute(now=1).release(now=1)
    _Req(c, [2]).compute(now=2).release(now=2)
    _Req(c, [3]).compute(now=3).release(now=3)
    assert (c.free, c.available()) == (0, 12)
    hit = c.lookup(Request(0, 0.0, UNIT + 5, 1, (3, 9), UNIT), 4)
    assert hit.pinned_blocks == 4
    assert not c.try_allocate(9, 4, hit)  # 12 available, 4 of them are the hit itself
    assert c.tree.nodes[3].refs == 0 and c.free == 0 and len(c.tree) == 3 and c.evictions == 0
    assert c.try_allocate(5, 4, hit)
    assert c.tree.nodes[3].refs == 1
    assert sorted(c.tree.nodes) == [3] and c.evictions == 2  # 1 then 2 evicted, 3 kept
    assert c.free == 3


def test_prefix_caching_off_never_hits_nor_caches():
    c = _cache("lru", prefix_caching=False)
    assert c.commit_unit(1, None, 0, 0, UNIT, 1) == (None, 0)
    assert c.lookup(Request(0, 0.0, 200, 1, (1, 2, 3), UNIT), 1) is NO_HIT


class _Cheapest:
    """An eviction policy that owns its candidate set: evict the cheapest node to recompute (ties:
    the earliest). Records what the tree told it."""

    reads_recompute_cost = True

    def __init__(self, context):
        self.context = context
        self.cands: dict[int, object] = {}
        self.log: list = []
        self.accesses: list = []

    def add(self, node, now_ns):
        self.log.append(("add", node.id, now_ns))
        self.cands[node.id] = node

    def remove(self, node):
        self.log.append(("remove", node.id))
        del self.cands[node.id]

    def pop(self, now_ns):
        if not self.cands:
            return None
        node = min(self.cands.values(), key=lambda n: (n.recompute_s, n.start_token))
        self.log.append(("pop", node.id, now_ns))
        return self.cands.pop(node.id)

    def on_access(self, node, now_ns, prev_access_ns):
        self.accesses.append((node.id, now_ns, prev_access_ns))


def test_a_policy_can_own_its_candidates_and_sees_cost_and_reuse_intervals():
    """The tree calls add/remove/pop; every node records its start token and the recompute cost
    the context prices at insert (here: position-dependent, as attention over a longer prefix
    costs more); the access hook sees the previous access time."""
    priced = []

    def recompute_s(start, tokens):
        priced.append((start, tokens))
        return 1.0 + start / 64

    ctx = EvictionContext(BS, "msa", None, recompute_s)
    policy = _Cheapest(ctx)
    c = KVCache(1000, BS, policy, layout="msa", recompute_s=ctx.recompute_s)
    r = _Req(c, [1, 2, 3]).compute(now=10)
    assert priced == [(0, 64), (64, 64), (128, 64)]
    assert [c.tree.nodes[i].recompute_s for i in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert [c.tree.nodes[i].start_token for i in (1, 2, 3)] == [0, 64, 128]
    r.release(now=20)
    hit = c.lookup(Request(0, 0.0, 3 * UNIT + 9, 1, (1, 2, 3, 4), UNIT), 30)
    assert c.try_allocate(0, 30, hit)
    assert policy.accesses[-3:] == [(1, 30, 20), (2, 30, 20), (3, 30, 20)]
    c.release(list(hit.nodes), 0, 40)
    assert _victims(c, now=50) == [1, 2, 3]  # cheapest (earliest) first: msa may leave holes
    assert policy.log[:3] == [("add", 3, 20), ("add", 2, 20), ("add", 1, 20)]
    assert ("remove", 1) in policy.log and policy.log[-1] == ("pop", 3, 50)


def test_time_dependent_flag_reaches_the_cache():
    class Timed(_Cheapest):
        time_dependent = True

    assert _cache(Timed(None)).time_dependent
    assert not _cache("lru").time_dependent


@pytest.mark.parametrize("layout", ["contiguous", "msa"])
def test_evictable_blocks_count_every_free_node(layout):
    c = _cache("lru", layout=layout)
    r = _Req(c, [1, 2, 3]).compute(now=1)
    assert c.tree.evictable_blocks == 0
    r.release(now=2)
    assert c.tree.evictable_blocks == 12 == c.available() - c.free
    _victims(c)
    assert c.tree.evictable_blocks == 0 and len(c.tree) == 0


def test_continuum_pins_an_agents_kv_through_its_tool_call():
    """A node released by an agent call whose job goes on (pinned) stays out of eviction for the
    TTL (3 ns here); other candidates leave in LRU order first; an expired pin is an ordinary LRU
    candidate again; with only pinned nodes left they go earliest released first."""
    c = _cache(EVICTION.create("continuum", None, ttl_s=3e-9), layout="msa")
    a = _Req(c, [1]).compute(now=0)
    b = _Req(c, [2]).compute(now=0)
    d = _Req(c, [3]).compute(now=0)
    c.release(a.nodes, 0, 10, pin=True)  # the agent's call ended in a tool call: pinned to 13
    c.release(b.nodes, 0, 11)
    c.release(d.nodes, 0, 12, pin=True)  # pinned to 15
    assert c.tree.pop_victim(12).id == 2  # only the unpinned one
    assert c.tree.pop_victim(12).id == 1  # nothing else: pinned, earliest released first
    e = _Req(c, [4]).compute(now=12)
    c.release(e.nodes, 0, 14)
    assert [c.tree.pop_victim(15).id for _ in range(2)] == [3, 4]  # 3's pin expired at 15


def test_continuum_learns_its_ttl_from_tool_gaps():
    """With ttl_s: auto the TTL is the 0.9 quantile of observed tool gaps (an agent call's release
    to the next access of its pinned KV), once 20 are seen."""
    policy = EVICTION.create("continuum", None, ttl_s="auto", initial_ttl_s=7.0)
    c = _cache(policy, layout="msa")
    assert policy.ttl_s == 7.0
    r = _Req(c, [1]).compute(now=0)
    now = 0
    for gap in range(1, 31):  # gaps of 1 … 30 ns
        c.release(r.nodes, 0, now, pin=True)
        now += gap
        hit = c.lookup(Request(0, 0.0, UNIT + 1, 1, (1, 2), UNIT), now)
        assert c.try_allocate(0, now, hit)
        if gap < 20:
            assert policy.ttl_s == 7.0
    assert policy.ttl_ns == 28  # sorted gaps 1…30, index int(0.9 × 30) = 27 → 28 ns


def test_continuum_bad_parameters():
    from kvsim.simulator.errors import KvsimError

    for bad in ({"ttl_s": -1}, {"ttl_s": "forever"}, {"quantile": 1.5}):
        with pytest.raises(KvsimError, match="eviction policy 'continuum'"):
            EVICTION.create("continuum", None, **bad)
