"""A replica's paged KV cache: a block pool shared by requests' private blocks and prefix nodes.

Pool invariant (checked by tests): capacity = free + Σ resident node blocks + Σ private blocks.
Private blocks hold a request's tokens that belong to no node yet (the unit being computed, its
generated tokens). Allocation evicts unreferenced nodes, in policy order, until enough blocks are
free. Physical block ids are not modelled: only counts matter for time, which keeps the pool O(1).
"""

from __future__ import annotations

from .prefix_tree import Node, PrefixTree


class KVCache:
    """Block accounting plus the prefix tree of one replica."""

    def __init__(self, capacity_blocks: int, block_tokens: int, policy):
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self.free = capacity_blocks
        self.tree = PrefixTree(policy)
        self.evictions = 0
        self.evicted_blocks = 0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def available(self) -> int:
        """Blocks an allocation can get: free plus those held only by unreferenced nodes."""
        return self.free + self.tree.evictable_blocks

    def allocate(self, blocks: int) -> None:
        """Take ``blocks`` from the pool, evicting as needed. Callers check ``available`` first."""
        while self.free < blocks:
            victim = self.tree.pop_victim()
            if victim is None:
                raise RuntimeError("KV pool over-allocated: caller did not check available()")
            self.free += victim.blocks
            self.evictions += 1
            self.evicted_blocks += victim.blocks
        self.free -= blocks

    def release(self, blocks: int) -> None:
        self.free += blocks

    def node_blocks(self) -> int:
        return sum(n.blocks for n in self.tree.nodes.values())

    def insert_or_share(
        self, node_id: int, depth: int, tokens: int, now_ns: int
    ) -> tuple[Node | None, int]:
        """Make unit ``node_id`` a node a request holds. Returns the node and the private blocks the
        request gives up: its own blocks become the node, or are freed if another request inserted
        the same unit meanwhile. Returns (None, 0) if a node of that id holds a different number
        of tokens (a partial unit of a shorter prompt): the request keeps its blocks private."""
        blocks = self.blocks_for(tokens)
        node = self.tree.nodes.get(node_id)
        if node is not None and node.tokens != tokens:
            return None, 0
        if node is None:
            node = self.tree.insert(node_id, depth, tokens, blocks, now_ns)
            self.tree.acquire(node, now_ns)
            return node, blocks
        self.tree.acquire(node, now_ns)
        self.free += blocks  # our duplicate copy is freed
        return node, blocks
