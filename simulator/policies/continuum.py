"""Continuum's eviction: keep an agent's KV cache through its tool call, for a time-to-live.

Continuum (Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent Scheduling with KV
Cache Time-to-Live", arXiv 2511.02230) pins the KV cache of an LLM call that ends in a tool call,
so that the agent's next call finds it, and lets it go when a time-to-live expires, so that a
long or lost tool call cannot hold GPU memory. Here a node released by an agent call whose job
goes on (``node.pinned``) is kept out of eviction until ``release + ttl``; every other candidate,
and pinned ones whose TTL expired, leave in LRU order (vLLM's free queue); only when nothing else
is left are pinned nodes evicted, earliest released first.

The paper picks the TTL from a utility model of the reload cost and the queueing delay an
eviction causes, over the distribution of tool-call durations. kvsim takes either a fixed
``ttl_s`` or, with ``ttl_s: auto``, a quantile (default 0.9) of the tool gaps it observes (the time
from an agent call's release to the next access of its pinned KV), re-estimated as gaps arrive,
``initial_ttl_s`` until 20 have been seen. The paper's program-level first-come-first-serve
scheduling is not modelled (kvsim's scheduler is FCFS by arrival).
"""

from __future__ import annotations

import bisect
import heapq

from .eviction import EVICTION, EvictionContext

_MIN_GAPS = 20
_MAX_GAPS = 4096  # a sliding window of the most recent tool gaps


@EVICTION.register("continuum")
class Continuum:
    """LRU, except that an agent's KV is pinned through its tool call for a time-to-live."""

    time_dependent = True  # a pin expires with the clock

    def __init__(
        self,
        context: EvictionContext | None = None,
        ttl_s: float | str = "auto",
        quantile: float = 0.9,
        initial_ttl_s: float = 5.0,
    ):
        if ttl_s != "auto" and (isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float))
                                or not 0 <= ttl_s < 1e9):  # fmt: skip
            raise ValueError(f"ttl_s is {ttl_s!r}; allowed: a number of seconds ≥ 0 or 'auto'")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile is {quantile!r}; allowed: 0 < quantile < 1")
        if not 0 <= initial_ttl_s < 1e9:
            raise ValueError(f"initial_ttl_s is {initial_ttl_s!r}; allowed: ≥ 0 seconds")
        self.auto = ttl_s == "auto"
        self.quantile = quantile
        self.ttl_ns = round((initial_ttl_s if self.auto else ttl_s) * 1e9)
        self._gaps: list[int] = []  # sorted recent tool gaps (ns)
        self._window: list[int] = []  # the same, in arrival order
        self._lru: list[tuple] = []  # (released, version, node)
        self._pinned: list[tuple] = []  # (expiry ns, released, version, node)

    @property
    def ttl_s(self) -> float:
        return self.ttl_ns / 1e9

    def on_access(self, node, now_ns: int, prev_access_ns: int) -> None:
        """An access of pinned KV ends a tool gap: learn its length (``ttl_s: auto``)."""
        if not (self.auto and node.pinned and node.refs == 0):
            return
        gap = now_ns - prev_access_ns
        self._window.append(gap)
        bisect.insort(self._gaps, gap)
        if len(self._window) > _MAX_GAPS:
            old = self._window.pop(0)
            del self._gaps[bisect.bisect_left(self._gaps, old)]
        if len(self._gaps) >= _MIN_GAPS:
            self.ttl_ns = self._gaps[min(len(self._gaps) - 1, int(self.quantile * len(self._gaps)))]

    def add(self, node, now_ns: int) -> None:
        node.policy_data = (node.policy_data or 0) + 1
        if node.pinned and self.ttl_ns > 0:
            heapq.heappush(self._pinned, (now_ns + self.ttl_ns, node.released, node.policy_data,
                                          node))  # fmt: skip
        else:
            heapq.heappush(self._lru, (node.released, node.policy_data, node))

    def remove(self, node) -> None:
        node.policy_data = (node.policy_data or 0) + 1  # its heap entries are stale now

    def pop(self, now_ns: int):
        pinned, lru = self._pinned, self._lru
        while pinned and pinned[0][0] <= now_ns:  # expired: an ordinary candidate now
            _, released, version, node = heapq.heappop(pinned)
            if node.candidate and node.policy_data == version:
                heapq.heappush(lru, (released, version, node))
        for heap, key in ((lru, 1), (pinned, 2)):
            while heap:
                entry = heapq.heappop(heap)
                node = entry[-1]
                if node.candidate and node.policy_data == entry[key]:
                    return node
        return None
