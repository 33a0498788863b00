"""Routing policies: which replica a new request goes to.

A policy ranks replicas: ``key(request, replica)`` returns a sort key and the replica with the
smallest key wins (ties go to the lowest index, so routing is deterministic). Replicas expose
``index``, ``routed`` (requests sent there so far), ``queued_tokens`` (prompt tokens not yet
prefilled), ``in_flight`` (requests waiting or running), ``num_running``, ``num_waiting`` and
``cached_prefix_tokens(request)`` (the tokens its cache would reuse); a policy that calls the
latter sets ``reads_cache = True``. One whose only cache read is ``cached_prefix_tokens`` of the
request being routed may also set ``prefix_only = True``: the cluster then brings up to date only
the caches that may hold the prompt's prefix (``KVCache.may_reuse``) and whose pending decode
blocks outnumber their free blocks (``Replica.sync_for_prefix``); elsewhere the update cannot
change the answer (it evicts nothing, or nothing of that prefix), and it happens at the
replica's next boundary or sync instead (one allocation of the summed blocks evicts what the
split ones would: see ``Replica.scheduler_allocate``).
"""

from __future__ import annotations

from typing import Protocol

from .registry import Registry

ROUTING = Registry("routing", interfaces=({"key": 2},), field="routing")


class RoutingPolicy(Protocol):
    def key(self, request, replica) -> tuple: ...


@ROUTING.register("round_robin")
class RoundRobin:
    """Replicas in turn, whatever their load: fewest requests routed so far, lowest index first."""

    def key(self, request, replica) -> tuple:
        return (replica.routed,)


@ROUTING.register("least_loaded")
class LeastLoaded:
    """Fewest prompt tokens waiting to be prefilled, then fewest requests in flight."""

    def key(self, request, replica) -> tuple:
        return (replica.queued_tokens, replica.in_flight)


@ROUTING.register("prefix_aware")
class PrefixAware:
    """Least expected prefill work: queued tokens plus the part of this prompt not cached there.

    A long cached prefix attracts the request, a long queue repels it, so the policy is
    load-balanced without a threshold to tune (cf. SGLang's cache-aware router).

    NOTE: a pool whose router is this class itself (not a subclass) ranks with
    ``replica.least_prefill_work``, the same ranking fused with the cache syncs in compiled code.
    """

    reads_cache = True  # the cluster brings the replicas' caches up to date before asking
    prefix_only = True  # ... those that may hold the prompt's first unit

    def key(self, request, replica) -> tuple:
        uncached = request.prompt_tokens - replica.cached_prefix_tokens(request)
        return (replica.queued_tokens + uncached, replica.in_flight)


def choose(policy, request, replicas) -> int:
    """Index of the replica ``policy`` ranks first (the lowest index among equal keys: ``min``
    returns the first smallest item)."""
    key = policy.key
    return min(replicas, key=lambda r: key(request, r)).index
