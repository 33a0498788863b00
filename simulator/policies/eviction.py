"""Eviction policies: which unreferenced prefix-tree node leaves the GPU first.

A policy only ranks (SGLang's eviction strategies are the model): ``key(node)`` returns a sort key,
and the node with the smallest key is evicted. Keys must not change while a node sits unreferenced
and must never decrease when it is accessed (they may read fields set on access), so the tree can
keep candidates in a lazily re-keyed heap: O(log n) a victim.
Optional hook ``on_access(node, now_ns)`` lets a policy learn from accesses.
"""

from __future__ import annotations

from typing import Protocol

from .registry import Registry

EVICTION = Registry("eviction")


class EvictionPolicy(Protocol):
    def key(self, node) -> tuple: ...


@EVICTION.register("lru")
class LRU:
    """Least recently used first; among equals, the deepest node first (vLLM frees a request's
    blocks tail first, so the tail of a prefix goes before its head)."""

    def key(self, node) -> tuple:
        return (node.last_access_ns, -node.depth)


@EVICTION.register("lfu")
class LFU:
    """Least frequently used first; ties broken as LRU."""

    def key(self, node) -> tuple:
        return (node.hits, node.last_access_ns, -node.depth)


@EVICTION.register("fifo")
class FIFO:
    """Oldest inserted first; among equals, the deepest first."""

    def key(self, node) -> tuple:
        return (node.created_ns, -node.depth)
