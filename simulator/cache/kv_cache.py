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

Hybrid and recurrent models (Sparse Prefix Caching, arXiv 2605.05219; DESIGN §5.3): a recurrent
layer can only resume from a stored state, so a hit of depth d resumes from c = the deepest
resident checkpoint ≤ min(d, resident KV depth) (and ≤ the last token), and everything after c is
recomputed in all layers; no checkpoint means a full recompute. Checkpoints are cache entries in
the same pool (``state_blocks`` blocks each), keyed by the chain id of the unit they follow, so
they lie on unit boundaries; a running sequence also holds its live state. A model without
attention keeps no KV: tokens cost no blocks and the pool's unit is one state.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from .prefix_tree import KeyedHeap, Node, PrefixTree

CONTIGUOUS: Final = "contiguous"
MSA: Final = "msa"


class Hit:
    """What a request can reuse from a replica's cache, in prompt order (a value: no side effects,
    never changed once made).

    ``ranges`` are the reused token ranges ``(start, end)`` (merged where adjacent), ``tokens``
    their total, ``nodes`` the nodes behind them, ``units`` the units found resident before the
    last one was given up for its logits (the prefix-hit ratio counts these), ``pinned_blocks``
    the blocks of hit nodes that are free now and stop being evictable once taken.

    NOTE: a plain class, not a dataclass: compiled, a dataclass keeps the ``__init__`` that
    ``dataclasses`` generates in Python, one interpreted call per lookup."""

    __slots__ = ("nodes", "ranges", "tokens", "units", "pinned_blocks", "resume", "cpu_nodes",
                 "cpu_blocks", "cpu_units")  # fmt: skip

    def __init__(
        self,
        nodes: tuple[Node, ...] = (),
        ranges: tuple[tuple[int, int], ...] = (),
        tokens: int = 0,
        units: int = 0,
        pinned_blocks: int = 0,
        resume: Node | None = None,
        cpu_nodes: tuple[Node, ...] = (),
        cpu_blocks: int = 0,
        cpu_units: int = 0,
    ):
        self.nodes = nodes
        self.ranges = ranges
        self.tokens = tokens
        self.units = units
        self.pinned_blocks = pinned_blocks
        self.resume = resume
        """Recurrent models: the checkpoint the sequence resumes from (its state is loaded)."""
        self.cpu_nodes = cpu_nodes
        """Units of the CPU tier that continue the GPU prefix (loaded over PCIe before use)."""
        self.cpu_blocks = cpu_blocks
        """GPU blocks those units take once loaded."""
        self.cpu_units = cpu_units
        """Units found in the CPU tier (of ``units``)."""


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
        state_blocks: int = 0,
        kv_free: bool = False,
        isolation: int | None = None,
        cpu=None,
    ):
        self.capacity = capacity_blocks
        self.cpu = cpu
        """The replica's CPU tier (``cpu_tier.CpuTier``), or None."""
        self.state_blocks = state_blocks
        """Blocks of one recurrent state (0: no recurrent layers)."""
        self.kv_free = kv_free
        """No attention layers: tokens hold no KV (``blocks_for`` is 0)."""
        self.isolation = isolation
        """Keep the checkpoints of the last ``isolation`` sequences only (FIFO; None: no limit)."""
        self._groups: deque = deque()
        self._held: dict = {}  # checkpoint -> sequences in the window that hold it
        self.block_tokens = block_tokens
        self.layout = layout
        self.prefix_caching = prefix_caching
        self.free = capacity_blocks
        candidates = policy if hasattr(policy, "pop") else KeyedHeap(policy.key)
        self.policy = policy
        self.time_dependent = (
            bool(getattr(policy, "time_dependent", False)) or cpu is not None or state_blocks > 0
        )
        """Victims depend on the clock — or, with a CPU tier, an eviction starts a copy over
        PCIe at its time; or, with recurrent states, evicting a checkpoint ends its share of the
        memory integral (``checkpoints.gb_mean``) at its time: evictions happen only at exact
        iteration boundaries."""
        self.tree = PrefixTree(candidates, layout == CONTIGUOUS, getattr(policy, "on_access", None))
        # NOTE: a node's recompute price is recorded at insert for policies that read it only.
        self._recompute_s = recompute_s if getattr(policy, "reads_recompute_cost", False) else None
        self.evictions = 0
        self.evicted_blocks = 0

    def blocks_for(self, tokens: int) -> int:
        return 0 if self.kv_free else -(-tokens // self.block_tokens)

    def available(self) -> int:
        """Blocks an allocation can get: free plus those held only by unreferenced nodes."""
        return self.free + self.tree.evictable_blocks

    # ---- lookup ----------------------------------------------------------------------------
    def _match(self, ids, prompt_tokens: int, unit_tokens: int) -> list[Node]:
        """The resident nodes of a prompt's units this layout reads: the longest cached prefix
        (contiguous), or every resident unit, holes skipped (msa)."""
        if self.layout == CONTIGUOUS:
            return self.tree.match_prefix(ids, prompt_tokens, unit_tokens)
        return self.tree.match_all(ids, prompt_tokens, unit_tokens)

    def lookup(self, req, now_ns: int, tokens: int | None = None) -> Hit:
        """The reusable part of ``req``'s prompt on this replica (DESIGN §9, S1), for a sequence
        of ``tokens`` tokens (default: the prompt; more after a preemption in decode). With prefix
        caching off nothing is ever committed, so nothing is found."""
        if not req.blocks:
            return NO_HIT
        if self.state_blocks:
            return self._resume(req, tokens or req.prompt_tokens)
        if self.cpu is not None:
            return self._lookup_tiers(req, tokens or req.prompt_tokens)
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

    def _lookup_tiers(self, req, end: int) -> Hit:
        """The GPU prefix (contiguous), then the CPU tier's units that continue it."""
        nodes = self._match(req.blocks, req.prompt_tokens, req.unit_tokens)
        cpu = self.cpu.match(req.blocks, len(nodes), req.prompt_tokens, req.unit_tokens)
        units, cpu_units = len(nodes) + len(cpu), len(cpu)
        if not units:
            return NO_HIT
        last = (cpu or nodes)[-1]
        if last.start_token + last.tokens >= end:
            (cpu or nodes).pop()  # at least the last token is computed: its logits need it
        tokens = pinned = 0
        for n in nodes:
            tokens += n.tokens
            if n.free:
                pinned += n.blocks
        cpu_blocks = 0
        for n in cpu:
            tokens += n.tokens
            cpu_blocks += n.blocks
        if not tokens:
            return Hit(units=units, cpu_units=cpu_units)
        return Hit(tuple(nodes), ((0, tokens),), tokens, units, pinned, None, tuple(cpu),
                   cpu_blocks, cpu_units)  # fmt: skip

    def _resume(self, req, end: int) -> Hit:
        """Recurrent models: the KV prefix up to the deepest resident checkpoint c ≤ min(KV
        depth, end − 1)."""
        ids, unit = req.blocks, req.unit_tokens
        nodes = [] if self.kv_free else self._match(ids, req.prompt_tokens, unit)
        k = min(len(ids) if self.kv_free else len(nodes), (end - 1) // unit)
        states = self.tree.states
        st = None
        while k > 0:
            st = states.get(ids[k - 1])
            if st is not None and st.depth == k - 1:
                break
            k -= 1
        if k == 0 or st is None:
            return NO_HIT
        nodes = nodes[:k]
        pinned = sum(n.blocks for n in nodes if n.free) + (st.blocks if st.free else 0)
        c = k * unit
        return Hit(tuple(nodes), ((0, c),), c, k, pinned, st)

    def may_reuse(self, req) -> bool:
        """False where ``cached_tokens(req)`` is 0 now and stays 0 whatever evictions come first:
        a contiguous prefix cache (no recurrent states, no CPU tier) that does not hold the
        prompt's first unit (evictions only take nodes away)."""
        if not req.blocks:
            return False
        if self.state_blocks or self.cpu is not None or self.layout != CONTIGUOUS:
            return True
        return req.blocks[0] in self.tree.nodes

    def cached_tokens(self, req) -> int:
        """Tokens of ``req``'s prompt this replica would reuse now (what routers compare): the
        tokens of ``lookup(req, now)``, without building the Hit."""
        if not req.blocks:
            return 0
        if self.state_blocks:
            return self._resume(req, req.prompt_tokens).tokens
        if self.cpu is not None:  # a CPU hit is reused too (after a load)
            return self._lookup_tiers(req, req.prompt_tokens).tokens
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
        tree = self.tree
        for node in hit.nodes:
            tree.acquire(node, now_ns)
        for node in hit.cpu_nodes:  # held in the CPU tier (not demoted over) until loaded
            self.cpu.tree.acquire(node, now_ns)
        if hit.resume is not None:  # held while the allocation evicts, then only touched
            tree.acquire(hit.resume, now_ns)
        self.allocate(blocks, now_ns)
        if hit.resume is not None:
            self.tree.release(hit.resume, now_ns)
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
            if self.cpu is not None and not victim.state:
                self.cpu.demote(victim, now_ns)
        if self.cpu is not None:
            self.cpu.flush()
        self.free -= blocks

    def release(self, nodes, blocks: int, now_ns: int, pin: bool = False) -> None:
        """A sequence gives back its nodes (tail first, as vLLM frees a sequence's blocks) and
        ``blocks`` private blocks. ``nodes`` are in position order under contiguous; under msa
        (reused units, then the units it computed) they are sorted deepest first. ``pin``: an
        agent's call that a tool call follows gave them back (policies may keep them)."""
        tree = self.tree
        ordered = reversed(nodes) if tree.leaf_only else sorted(
            nodes, key=lambda n: n.depth, reverse=True
        )  # fmt: skip
        for node in ordered:
            tree.release(node, now_ns, pin)
        self.free += blocks

    def node_blocks(self) -> int:
        tree = self.tree
        return sum(n.blocks for n in tree.nodes.values()) + sum(
            n.blocks for n in tree.states.values()
        )

    # ---- recurrent-state checkpoints -------------------------------------------------------
    def store_state(self, unit_id: int, parent: Node | None, depth: int, position: int,
                    now_ns: int) -> Node | None:  # fmt: skip
        """Keep the state after unit ``unit_id`` in ``state_blocks`` blocks the caller already
        allocated. Returns the new checkpoint, or None if it was resident (then the caller frees
        its blocks; the resident one is touched)."""
        tree = self.tree
        old = tree.states.get(unit_id)
        if old is not None:
            tree.acquire(old, now_ns)
            tree.release(old, now_ns)
            return None
        return tree.insert_state(unit_id, parent, depth, position, self.state_blocks, now_ns)

    def close_group(self, states: list[Node], now_ns: int) -> None:
        """A finished sequence's checkpoints, for the isolation cache (the window of the last
        ``isolation`` sequences, FIFO): a checkpoint stays while a sequence in the window holds
        it; once none does, it is dropped (if no running sequence uses it meanwhile, else it is
        an ordinary eviction candidate)."""
        if self.isolation is None or not states:
            return
        self._groups.append(states)
        held = self._held
        for node in states:
            held[node] = held.get(node, 0) + 1
        tree = self.tree
        while len(self._groups) > self.isolation:
            for node in self._groups.popleft():
                left = held.pop(node) - 1
                if left:
                    held[node] = left
                elif tree.states.get(node.id) is node and node.free:
                    tree.drop(node, now_ns)
                    self.free += node.blocks
                    self.evictions += 1
                    self.evicted_blocks += node.blocks

    # ---- inserting computed units -----------------------------------------------------------
    def commit_unit(
        self, node_id: int, parent: Node | None, depth: int, start: int, unit_tokens: int,
        now_ns: int,
    ) -> tuple[Node | None, int]:  # fmt: skip
        """Make a computed unit a node the request holds. Returns the node and the private blocks
        the request gives up: its own blocks become the node, or are freed if another request
        inserted the same unit meanwhile. Returns (None, 0) when prefix caching is off, when the
        model keeps no KV, when the unit has no full block, or when a node of that id holds
        another content (a unit of
        another length, at another position or, under contiguous, after another parent): the
        request keeps its blocks private."""
        blocks = unit_tokens // self.block_tokens
        if not self.prefix_caching or blocks == 0 or self.kv_free:
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
