"""Eviction policies: which free prefix-tree node leaves the GPU first (DESIGN §5.1, §9 S2).

A policy is created as ``Policy(context, **params)`` with an :class:`EvictionContext` (block
size, layout, the model, and ``recompute_s(start_token, tokens)`` priced by the replica's own
latency model). It takes one of two shapes:

- it only **ranks** (SGLang's eviction strategies are the model): ``key(node)`` returns a sort
  key, the smallest is evicted. Keys may read fields set on access and release and must never
  decrease while a node is resident; the tree keeps candidates in a lazily re-keyed heap;
- it **owns its candidate set**: ``add(node, now_ns)``, ``remove(node)``, ``pop(now_ns)``.

Optional: ``on_access(node, now_ns, prev_access_ns)`` hears every acquire with the time the node
was last in use (reuse intervals); ``reads_recompute_cost = True`` asks the cache to price each
node's ``recompute_s`` at insert (otherwise it is 0.0: nobody pays for what no one reads);
``time_dependent = True`` says victims depend on the clock, so
evictions then happen only at exact iteration boundaries (fast-forwarded decode runs stop before
one); ``layouts`` names the cache layouts it supports.

A node's fields a policy may read: ``depth`` (unit index), ``start_token``, ``tokens``, ``blocks``,
``hits``, ``last_access_ns`` (stamped at acquire and at release), ``released`` (the tree's
release counter at its last release: vLLM's free-queue order), ``created_ns``,
``recompute_s`` (priced at insert) and ``policy_data`` (its own).

Here: ``lru``, ``lfu``, ``fifo`` (ranking). ``asymcache`` is in :mod:`.asymcache`, its peers
``max_score`` and ``pensieve`` in :mod:`.eviction_peers`; they own their candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .registry import Registry


@dataclass(frozen=True)
class EvictionContext:
    """What an eviction policy may know about its replica."""

    block_tokens: int
    layout: str
    model: object
    recompute_s: Callable[[int, int], float]
    """Seconds to recompute ``tokens`` tokens at position ``start_token`` on this replica."""


class RankingPolicy(Protocol):
    def key(self, node) -> tuple: ...


class CandidateSetPolicy(Protocol):
    def add(self, node, now_ns: int) -> None: ...

    def remove(self, node) -> None: ...

    def pop(self, now_ns: int): ...


EVICTION = Registry(
    "eviction", interfaces=({"key": 1}, {"add": 2, "remove": 1, "pop": 1}), field="cache.eviction"
)


@EVICTION.register("lru")
class LRU:
    """Least recently used first, exactly vLLM's free-block queue: in the order nodes were last
    released (a request frees its blocks, tail first, when it finishes or is preempted)."""

    def __init__(self, context: EvictionContext | None = None):
        pass

    def key(self, node) -> tuple:
        return (node.released,)


@EVICTION.register("lfu")
class LFU:
    """Least frequently used first; ties broken as LRU."""

    def __init__(self, context: EvictionContext | None = None):
        pass

    def key(self, node) -> tuple:
        return (node.hits, node.released)


@EVICTION.register("fifo")
class FIFO:
    """Oldest inserted first; among equals, the deepest first."""

    def __init__(self, context: EvictionContext | None = None):
        pass

    def key(self, node) -> tuple:
        return (node.created_ns, -node.depth)
