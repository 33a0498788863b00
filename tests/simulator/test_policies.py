"""Routing policies and the policy registries, driven without a SimPy environment (eviction
order is pinned in test_prefix_tree)."""

from __future__ import annotations

import pytest

from kvsim.simulator.errors import KvsimError
from kvsim.simulator.policies import EVICTION, ROUTING
from kvsim.simulator.policies.routing import choose
from kvsim.traces import Request


def test_registry_errors_and_dotted_paths():
    with pytest.raises(KvsimError, match="did you mean 'lru'"):
        EVICTION.resolve("lruu")
    assert EVICTION.resolve("kvsim.simulator.policies.eviction:LFU").policy_name == "lfu"
    with pytest.raises(KvsimError, match="cannot be imported"):
        ROUTING.resolve("nowhere.module:Thing")


@pytest.mark.parametrize(
    "path, why",
    [
        ("os:system", "is not a class"),
        ("builtins:int", "does not implement the eviction interface"),
        ("collections:OrderedDict", "does not implement the eviction interface"),
        ("kvsim.simulator.policies.routing:LeastLoaded", "does not implement the eviction"),
        ("..", "not a valid import path"),
    ],
)
def test_a_dotted_path_must_name_a_policy_class_of_the_family(path, why):
    """Resolved before anything is instantiated: a function, a builtin or another family's
    policy is refused (an eviction key takes a node, a routing key a request and a replica)."""
    with pytest.raises(KvsimError, match=why):
        EVICTION.resolve(path)
    with pytest.raises(KvsimError, match="does not implement the routing interface"):
        ROUTING.resolve("kvsim.simulator.policies.eviction:LRU")


def test_bad_policy_parameters_are_one_line_errors():
    with pytest.raises(KvsimError, match=r"eviction policy 'lru': bad parameters \{'p': 1\}"):
        EVICTION.create("lru", None, p=1)


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
