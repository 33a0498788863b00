"""Grouped prompts over shared contexts: document QA and system prompts, the two workloads of
Sparse Prefix Caching (arXiv 2605.05219; the authors' code, arabel1a/sparse-prefix-caching).

A *group* is one shared context — a document (QuALITY: several questions on one article) or a
long system prompt (30 short user queries each) — and its requests: each prompt is the context
followed by the request's own tokens (a question with its options, a user query). Every group is
a Poisson process of its own (rate / groups), started at time 0, and the groups' requests are
interleaved by arrival time, keeping the order within a group: the authors' ``interleave`` with
exponential gaps. Overlap depths then come from the context only, and their distribution is what
a learning checkpoint placement sees.

The context's units carry the group's chain ids, so a later request of the group reuses them;
the unit where the context ends and the request's own tokens begin, and everything after, is the
request's own. Prompts are clipped to ``max_prompt_tokens`` (the authors use 16,384) by
shortening the context.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np

from .generators import LengthDist
from .request import Request

_GROUP_IDS = 10**9  # chain ids of group g's context: (g + 1)·10⁹ + unit index
_OWN_IDS = 1  # requests' own units: 1, 2, … (below every group's ids)


def group_sizes(groups: int, queries: LengthDist, seed: int) -> list[int]:
    """Requests per group (at least one): the generator's first draw, so callers can count the
    requests of a workload without generating it."""
    return _sizes(np.random.default_rng(seed), groups, queries)


def _sizes(rng: np.random.Generator, groups: int, queries: LengthDist) -> list[int]:
    return [max(1, int(q)) for q in queries.sample(rng, groups)]


def grouped_requests(
    groups: int,
    queries: LengthDist,
    context_tokens: LengthDist,
    own_tokens: LengthDist,
    output_tokens: LengthDist,
    rate: float,
    unit_tokens: int = 64,
    max_prompt_tokens: int = 16384,
    seed: int = 0,
) -> Iterator[Request]:
    """Stream the requests of ``groups`` shared contexts in arrival order (ids in that order);
    the same arguments give the same requests."""
    rng = np.random.default_rng(seed)
    sizes = _sizes(rng, groups, queries)  # the first draw, as group_sizes
    contexts = context_tokens.sample(rng, groups).tolist()
    group_rate = rate / groups
    # Arrival times of every group's requests, then their own lengths, group by group.
    streams = []
    for g, n in enumerate(sizes):
        times = np.cumsum(rng.exponential(1.0 / group_rate, size=n)).tolist()
        own = own_tokens.sample(rng, n).tolist()
        out = output_tokens.sample(rng, n).tolist()
        streams.append([(times[k], g, k, own[k], out[k]) for k in range(n)])
    u = unit_tokens
    next_own = _OWN_IDS
    for rid, (t, g, _k, own, out) in enumerate(heapq.merge(*streams)):
        own = min(int(own), max_prompt_tokens - 1)
        context = min(int(contexts[g]), max_prompt_tokens - own)
        prompt = context + own
        shared = context // u  # the context's whole units; the rest of it is the request's own
        base = (g + 1) * _GROUP_IDS
        blocks = list(range(base, base + shared))
        mine = -(-prompt // u) - shared
        blocks.extend(range(next_own, next_own + mine))
        next_own += mine
        yield Request(rid, t, prompt, max(1, int(out)), tuple(blocks), u)
