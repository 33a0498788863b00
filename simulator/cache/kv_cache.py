"""A replica's paged KV cache: a block pool shared by requests' private blocks and prefix nodes.

Pool invariant (checked by tests): capacity = free + Σ resident node blocks + Σ private blocks.
Private blocks hold a request's tokens that belong to no node (the unit being computed, the
partly filled last block of a partial unit, generated tokens). Physical block ids are not
modelled: only counts matter for time, which keeps the pool O(1).

The scheduler sees the cache through three calls (DESIGN §9, S1), as vLLM's scheduler sees its
``KVCacheManager``: ``lookup(request, now)`` returns a :class:`Hit` (what is reusable; no side
effects), ``try_allocate(blocks, now, hit)`` checks and allocates together — taking the hit's
nodes and ``blocks`` new blocks, evicting candidates in policy order as needed — or returns False
and changes nothing (vLLM's ``allocate_slots`` returning ``None``); ``commit_unit`` turns a
computed unit into a node and ``release`` gives a sequence's nodes and blocks back.

Layouts: ``contiguous`` (vLLM) reuses the resident prefix up to the first hole; ``msa`` reuses
every resident unit of the prompt, and the holes are recomputed (AsymCache, arXiv 2606.02964).
Either way the last unit is recomputed when a hit would cover the prompt's last token: its logits
need the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from .prefix_tree import KeyedHeap, Node, PrefixTree

CONTIGUOUS, MSA = "contiguous", "msa"


@dataclass(slots=True, frozen=True)
class Hit:
    """What a request can reuse from a replica's cache, in prompt order (a value: no side effects).

    ``ranges`` are the reused token ranges ``(start, end)`` (merged where adjacent), ``tokens``
    their total, ``nodes`` the nodes behind them, ``units`` the units found resident before the
    last one was given up for its logits (the prefix-hit ratio counts these), ``pinned_blocks``
    the blocks of hit nodes that are free now and stop being evictable once taken."""

    nodes: tuple[Node, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    tokens: int = 0
    units: int = 0
    pinned_blocks: int = 0


NO_HIT = Hit()


class KVCache:
    """Block accounting plus the prefix tree of one replica."""

    def __init__(
        self,
        capacity_blocks: int,
        block_tokens: int,
        policy,
        layout: str = CONTIGUOUS,
        prefix_caching: bool = True,
        recompute_s=None,
    ):
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self.layout = layout
        self.prefix_caching = prefix_caching
        self.free = capacity_blocks
        candidates = policy if hasattr(policy, "pop") else KeyedHeap(policy.key)
        self.policy = policy
        self.time_dependent = bool(getattr(policy, "time_dependent", False))
        """Victims depend on the clock: evictions happen only at exact iteration boundaries."""
        self.tree = PrefixTree(candidates, layout == CONTIGUOUS, getattr(policy, "on_access", None))
        # NOTE: a node's recompute price is recorded at insert for policies that read it only.
        self._recompute_s = recompute_s if getattr(policy, "reads_recompute_cost", False) else None
        self._match = self.tree.match_prefix if layout == CONTIGUOUS else self.tree.match_all
        self.evictions = 0
        self.evicted_blocks = 0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def available(self) -> int:
        """Blocks an allocation can get: free plus those held only by unreferenced nodes."""
        return self.free + self.tree.evictable_blocks

    # ---- lookup ----------------------------------------------------------------------------
    def lookup(self, req, now_ns: int, tokens: int | None = None) -> Hit:
        """The reusable part of ``req``'s prompt on this replica (DESIGN §9, S1), for a sequence
        of ``tokens`` tokens (default: the prompt; more after a preemption in decode). With prefix
        caching off nothing is ever committed, so nothing is found."""
        if not req.blocks:
            return NO_HIT
        nodes = self._match(req.blocks, req.prompt_tokens, req.unit_tokens)
        if not nodes:
            return NO_HIT
        units = len(nodes)
        last = nodes[-1]
        if last.start_token + last.tokens >= (tokens or req.prompt_tokens):
            nodes.pop()  # at least the last token is computed: its logits need it
            if not nodes:
                return Hit(units=units)
        tokens = pinned = 0
        if self.tree.leaf_only:  # NOTE (hot path): contiguous nodes form one range from 0
            for n in nodes:
                tokens += n.tokens
                if n.free:
                    pinned += n.blocks
            return Hit(tuple(nodes), ((0, tokens),), tokens, units, pinned)
        ranges: list[tuple[int, int]] = []
        for n in nodes:
            start, end = n.start_token, n.start_token + n.tokens
            tokens += n.tokens
            if n.free:
                pinned += n.blocks
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return Hit(tuple(nodes), tuple(ranges), tokens, units, pinned)

    def cached_tokens(self, req) -> int:
        """Tokens of ``req``'s prompt this replica would reuse now (what routers compare): the
        tokens of ``lookup(req, now)``, without building the Hit."""
        if not req.blocks:
            return 0
        nodes = self._match(req.blocks, req.prompt_tokens, req.unit_tokens)
        if not nodes:
            return 0
        total = 0
        for n in nodes:
            total += n.tokens
        last = nodes[-1]
        if last.start_token + last.tokens >= req.prompt_tokens:
            total -= last.tokens
        return total

    # ---- allocation -------------------------------------------------------------------------
    def try_allocate(self, blocks: int, now_ns: int, hit: Hit = NO_HIT, reserve: int = 0) -> bool:
        """Take ``hit``'s nodes and ``blocks`` new blocks, evicting as needed; or, if they do not
        fit with ``reserve`` blocks still available after, change nothing and return False."""
        if blocks + reserve > self.free + self.tree.evictable_blocks - hit.pinned_blocks:
            return False
        acquire = self.tree.acquire
        for node in hit.nodes:
            acquire(node, now_ns)
        self.allocate(blocks, now_ns)
        return True

    def allocate(self, blocks: int, now_ns: int) -> None:
        """Take ``blocks`` from the pool, evicting as needed. Callers checked ``available()``."""
        while self.free < blocks:
            victim = self.tree.pop_victim(now_ns)
            if victim is None:
                raise RuntimeError("KV pool over-allocated: caller did not check available()")
            self.free += victim.blocks
            self.evictions += 1
            self.evicted_blocks += victim.blocks
        self.free -= blocks

    def release(self, nodes, blocks: int, now_ns: int, pin: bool = False) -> None:
        """A sequence gives back its nodes (tail first, as vLLM frees a sequence's blocks) and
        ``blocks`` private blocks. ``nodes`` are in position order under contiguous; under msa
        (reused units, then the units it computed) they are sorted deepest first. ``pin``: an
        agent's call that a tool call follows gave them back (policies may keep them)."""
        release = self.tree.release
        ordered = reversed(nodes) if self.tree.leaf_only else sorted(
            nodes, key=lambda n: n.depth, reverse=True
        )  # fmt: skip
        for node in ordered:
            release(node, now_ns, pin)
        self.free += blocks

    def node_blocks(self) -> int:
        return sum(n.blocks for n in self.tree.nodes.values())

    # ---- inserting computed units -----------------------------------------------------------
    def commit_unit(
        self, node_id: int, parent: Node | None, depth: int, start: int, unit_tokens: int,
        now_ns: int,
    ) -> tuple[Node | None, int]:  # fmt: skip
        """Make a computed unit a node the request holds. Returns the node and the private blocks
        the request gives up: its own blocks become the node, or are freed if another request
        inserted the same unit meanwhile. Returns (None, 0) when prefix caching is off, when the
        unit has no full block, or when a node of that id holds another content (a unit of
        another length, at another position or, under contiguous, after another parent): the
        request keeps its blocks private."""
        blocks = unit_tokens // self.block_tokens
        if not self.prefix_caching or blocks == 0:
            return None, 0
        tokens = blocks * self.block_tokens
        tree = self.tree
        node = tree.nodes.get(node_id)
        if node is not None:
            if (
                node.unit_tokens != unit_tokens
                or node.depth != depth
                or (tree.leaf_only and node.parent is not parent)
            ):
                return None, 0
            tree.acquire(node, now_ns)
            self.free += blocks  # our duplicate copy is freed
            return node, blocks
        cost = self._recompute_s(start, tokens) if self._recompute_s is not None else 0.0
        node = tree.insert(node_id, parent, depth, start, unit_tokens, tokens, blocks, now_ns, cost)
        tree.acquire(node, now_ns)
        return node, blocks
