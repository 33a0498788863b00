"""Eviction and routing policies, driven without a SimPy environment."""

from __future__ import annotations

import pytest

from kvsim.simulator.cache import KVCache
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.policies import EVICTION, ROUTING
from kvsim.simulator.policies.routing import choose
from kvsim.traces import Request


def _cache(policy: str, capacity: int = 100) -> KVCache:
    return KVCache(capacity, 16, EVICTION.create(policy))


def _add(cache, node_id, depth, now, tokens=16):
    node, _ = cache.insert_or_share(node_id, depth, tokens, now)
    cache.free -= node.blocks  # the request's private block became the node's
    return node


def _victims(cache, n):
    out = []
    for _ in range(n):
        v = cache.tree.pop_victim()
        out.append(v.id)
        cache.free += v.blocks
    return out


def test_lru_evicts_least_recent_and_deepest_first_on_ties():
    c = _cache("lru")
    chain = [_add(c, i, i, now=10) for i in range(3)]  # one request's prefix, same access time
    other = _add(c, 99, 0, now=5)
    for n in reversed(chain):  # released tail first, as vLLM frees blocks
        c.tree.release(n)
    c.tree.release(other)
    assert _victims(c, 4) == [99, 2, 1, 0]


def test_lru_reaccess_protects_a_node():
    c = _cache("lru")
    a, b = _add(c, 1, 0, now=1), _add(c, 2, 0, now=2)
    c.tree.release(a)
    c.tree.release(b)
    c.tree.acquire(a, now_ns=3)  # a hit refreshes a
    c.tree.release(a)
    assert _victims(c, 2) == [2, 1]


def test_lfu_and_fifo():
    c = _cache("lfu")
    a, b = _add(c, 1, 0, now=1), _add(c, 2, 0, now=2)
    c.tree.acquire(a, 3)  # a now has 2 hits
    c.tree.release(a)
    c.tree.release(a)
    c.tree.release(b)
    assert _victims(c, 2) == [2, 1]
    f = _cache("fifo")
    a, b = _add(f, 1, 0, now=1), _add(f, 2, 0, now=2)
    f.tree.acquire(a, 5)
    f.tree.release(a)
    f.tree.release(a)
    f.tree.release(b)
    assert _victims(f, 2) == [1, 2]


def test_allocate_evicts_only_what_it_needs_and_referenced_nodes_stay():
    c = _cache("lru", capacity=4)
    held = _add(c, 1, 0, now=1)
    free_node = _add(c, 2, 0, now=2)
    c.tree.release(free_node)
    assert c.available() == 3
    c.allocate(3)
    assert 1 in c.tree.nodes and 2 not in c.tree.nodes and held.refs == 1
    assert c.free == 0 and c.evictions == 1


def test_registry_errors_and_dotted_paths():
    with pytest.raises(KvsimError, match="did you mean 'lru'"):
        EVICTION.resolve("lruu")
    assert EVICTION.resolve("kvsim.simulator.policies.eviction:LFU").policy_name == "lfu"
    with pytest.raises(KvsimError, match="cannot be imported"):
        ROUTING.resolve("nowhere.module:Thing")


class _Rep:
    def __init__(self, index, queued=0, running=0, cached=0):
        self.index, self.queued_tokens, self.num_running = index, queued, running
        self.num_waiting, self.routed, self._cached = 0, 0, cached
        self.in_flight = running

    def cached_prefix_tokens(self, request):
        return self._cached


def test_routing_policies():
    req = Request(0, 0.0, 1000, 10, (1, 2), 512)
    reps = [_Rep(0, queued=500), _Rep(1, queued=100), _Rep(2, queued=100, running=3)]
    assert choose(ROUTING.create("least_loaded"), req, reps) == 1
    rr = ROUTING.create("round_robin")
    picks = []
    for _ in range(5):
        i = choose(rr, req, reps)
        reps[i].routed += 1
        picks.append(i)
    assert picks == [0, 1, 2, 0, 1]
    # prefix-aware: 600 cached tokens outweigh 400 more queued tokens
    reps = [_Rep(0, queued=100), _Rep(1, queued=500, cached=1000)]
    assert choose(ROUTING.create("prefix_aware"), req, reps) == 1
    reps = [_Rep(0, queued=100), _Rep(1, queued=5000, cached=1000)]
    assert choose(ROUTING.create("prefix_aware"), req, reps) == 0
