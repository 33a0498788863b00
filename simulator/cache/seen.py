"""Recently seen prompt prefixes: the overlap depths a learning checkpoint placement observes.

Sparse Prefix Caching (arXiv 2605.05219) places checkpoints by the distribution of *overlap
depths*: how far an arriving prompt shares a prefix with earlier requests, whatever the cache
still holds. A bounded first-in-first-out set of recently seen unit chain ids answers that
(chain ids: a unit seen means its whole prefix was seen), in memory independent of the trace.
"""

from __future__ import annotations


class SeenPrefixes:
    """The last ``capacity`` distinct unit chain ids seen in prompts."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._ids: dict[int, None] = {}  # insertion order = age

    def depth(self, req) -> int:
        """Tokens of ``req``'s prompt shared with a prompt seen before (then it is seen)."""
        ids, seen = req.blocks, self._ids
        k = 0
        while k < len(ids) and ids[k] in seen:
            k += 1
        for i in ids:
            if i not in seen:
                seen[i] = None
        while len(seen) > self.capacity:
            del seen[next(iter(seen))]
        return min(k * req.unit_tokens, req.prompt_tokens)
