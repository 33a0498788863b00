"""A replica's CPU KV tier: units the GPU evicted, kept in host memory behind a PCIe link.

DESIGN §5 and §5.1 (the eviction policy decides which unreferenced units leave the GPU, "and go
to the CPU tier if there is one"), as vLLM's CPU offloading connector and LMCache's local CPU
backend keep evicted KV. The tiers are exclusive: a unit lives on the GPU or here.

- **Demotion.** When the GPU pool evicts a unit's node, the unit is copied here over the PCIe
  link's device-to-host direction (its blocks on the GPU are free at once); it can be hit only
  once that copy has arrived (``ready``). The units one allocation evicts go as one copy (one
  DMA of their blocks), which arrives whole. If the tier is full, its own eviction policy (any of
  the eviction registry, default LRU) picks victims among unreferenced units; every resident unit
  is a candidate (a unit whose predecessor left is unreachable, and goes in its turn).
- **Hit.** A prompt's GPU prefix continues here: units resident and ready at the next positions
  (same id, position and length, as on the GPU) are loaded over the host-to-device direction
  before the prefill that needs them (the sequence waits, holding their GPU blocks); then they
  become GPU nodes again and leave the tier.
Hit ratios are reported per tier. Capacity is in blocks of the GPU pool's size.
"""

from __future__ import annotations

from .prefix_tree import KeyedHeap, Node, PrefixTree


class CpuTier:
    """Units in host memory, with their own eviction policy and the two PCIe directions."""

    def __init__(self, capacity_blocks: int, policy, block_bytes: int, h2d, d2h):
        self.capacity = capacity_blocks
        self.free = capacity_blocks
        candidates = policy if hasattr(policy, "pop") else KeyedHeap(policy.key)
        self.tree = PrefixTree(candidates, False, getattr(policy, "on_access", None))
        self.block_bytes = block_bytes
        """Bytes of one KV block on one GPU (what a block costs on PCIe and here)."""
        self.h2d = h2d
        """The PCIe link's host-to-device direction (loads)."""
        self.d2h = d2h
        """The device-to-host direction (demotions)."""
        self.on_arrival = lambda: None
        """Called when demoted units arrive (a waiting prompt may now hit them)."""
        self._copying: list[Node] = []
        """Units demoted by the allocation under way (sent together by ``flush``)."""
        self.demotions = 0
        self.loads = 0
        self.loaded_blocks = 0
        self.evictions = 0

    def demote(self, node: Node, now_ns: int) -> None:
        """The GPU evicted ``node``: keep its unit here (copied over PCIe), evicting units of this
        tier by its policy as needed; a unit larger than the tier is dropped."""
        tree = self.tree
        old = tree.nodes.get(node.id)
        if old is not None:
            if old.depth == node.depth and old.unit_tokens == node.unit_tokens:
                return  # already here (loaded elsewhere meanwhile): no copy
            if not old.free:
                return  # another content under that id, being loaded: keep it
            tree.drop(old, now_ns)
            self.free += old.blocks
        if node.blocks > self.capacity:
            return
        while self.free < node.blocks:
            victim = tree.pop_victim(now_ns)
            if victim is None:
                return  # everything here is being loaded: drop the unit
            self.free += victim.blocks
            self.evictions += 1
        copy = tree.insert(node.id, None, node.depth, node.start_token, node.unit_tokens,
                           node.tokens, node.blocks, now_ns)  # fmt: skip
        copy.ready = False
        copy.refs = 1  # free (an eviction candidate) from now on, stamped as released now
        tree.release(copy, now_ns)
        self.free -= node.blocks
        self.demotions += 1
        self._copying.append(copy)

    def flush(self) -> None:
        """Send the units demoted by one allocation as one copy over PCIe."""
        units = self._copying
        if not units:
            return
        self._copying = []

        def arrived(_t: int) -> None:
            for copy in units:
                copy.ready = True
            self.on_arrival()

        blocks = sum(c.blocks for c in units)
        self.d2h.send(blocks * self.block_bytes, units[0].id, arrived)

    def match(self, ids, start: int, prompt_tokens: int, unit_tokens: int) -> list[Node]:
        """The ready units here that continue a prompt's prefix from unit ``start``."""
        out = []
        get = self.tree.nodes.get
        last = len(ids) - 1
        for u in range(start, len(ids)):
            node = get(ids[u])
            want = unit_tokens if u < last else prompt_tokens - last * unit_tokens
            if node is None or not node.ready or node.depth != u or node.unit_tokens != want:
                break
            out.append(node)
        return out

    def load(self, nodes, key: int, now_ns: int, on_done) -> None:
        """Copy ``nodes`` (held since the allocation that took their GPU blocks) to the GPU;
        they stay here until ``loaded``."""
        blocks = 0
        for node in nodes:
            blocks += node.blocks
        self.loads += 1
        self.loaded_blocks += blocks
        self.h2d.send(blocks * self.block_bytes, key, on_done)

    def loaded(self, nodes, now_ns: int) -> None:
        """The units are on the GPU now: they leave this tier (the tiers are exclusive)."""
        tree = self.tree
        for node in nodes:
            tree.release(node, now_ns)
            if tree.nodes.get(node.id) is node and node.free:
                tree.drop(node, now_ns)
                self.free += node.blocks

    def blocks_held(self) -> int:
        return sum(n.blocks for n in self.tree.nodes.values())
