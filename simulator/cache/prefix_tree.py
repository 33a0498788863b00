"""The prefix tree over content units and its eviction candidates.

Nodes are content units keyed by chain id (equal ids ⇒ identical prefix up to that unit, DESIGN §3),
so the tree is a dict from id to node: walking a request's ids from the start finds its cached
prefix. A node spans ceil(tokens / block_tokens) pool blocks. A node with no referencing request is
an eviction candidate; candidates sit in a heap keyed by the eviction policy, with lazy deletion:
NOTE: a candidate that gets referenced again is not removed from the heap; its entry goes stale
(version mismatch) and is skipped when popped. The heap is rebuilt when stale entries dominate.
"""

from __future__ import annotations

import heapq


class Node:
    """One content unit resident in a replica's KV cache."""

    __slots__ = (
        "id",
        "depth",
        "tokens",
        "blocks",
        "refs",
        "hits",
        "last_access_ns",
        "created_ns",
        "version",
    )

    def __init__(self, node_id: int, depth: int, tokens: int, blocks: int, now_ns: int):
        self.id = node_id
        self.depth = depth
        self.tokens = tokens
        self.blocks = blocks
        self.refs = 0
        self.hits = 0
        self.last_access_ns = now_ns
        self.created_ns = now_ns
        self.version = 0

    def __repr__(self) -> str:
        return f"Node(id={self.id}, depth={self.depth}, tokens={self.tokens}, refs={self.refs})"


class PrefixTree:
    """Resident nodes by chain id, with the unreferenced ones ranked for eviction."""

    def __init__(self, policy):
        self.policy = policy
        self.nodes: dict[int, Node] = {}
        self.evictable_blocks = 0
        self._heap: list[tuple] = []
        self._stale = 0
        self._seq = 0
        self._on_access = getattr(policy, "on_access", None)

    def __len__(self) -> int:
        return len(self.nodes)

    def match(self, ids: tuple[int, ...], prompt_tokens: int, unit_tokens: int) -> list[Node]:
        """The resident nodes of the longest cached prefix of a prompt's unit ids.

        A node matches only if it holds as many tokens as the prompt's unit at that position: a
        partial last unit cached by a shorter prompt is not reused by a longer one."""
        out = []
        get = self.nodes.get
        rest = prompt_tokens
        for i in ids:
            node = get(i)
            if node is None or node.tokens != (unit_tokens if rest > unit_tokens else rest):
                break
            out.append(node)
            rest -= unit_tokens
        return out

    def insert(self, node_id: int, depth: int, tokens: int, blocks: int, now_ns: int) -> Node:
        node = Node(node_id, depth, tokens, blocks, now_ns)
        self.nodes[node_id] = node
        return node

    def acquire(self, node: Node, now_ns: int) -> None:
        """A request starts to use ``node`` (a hit or its own insert)."""
        if node.refs == 0 and node.version > 0:
            self.evictable_blocks -= node.blocks
            node.version += 1  # its heap entry is now stale
            self._stale += 1
        node.refs += 1
        node.hits += 1
        node.last_access_ns = now_ns
        if self._on_access is not None:
            self._on_access(node, now_ns)

    def release(self, node: Node) -> None:
        """A request stops using ``node``; unreferenced nodes become eviction candidates."""
        node.refs -= 1
        if node.refs == 0:
            node.version += 1
            self._seq += 1
            heapq.heappush(self._heap, (self.policy.key(node), self._seq, node.version, node))
            self.evictable_blocks += node.blocks

    def pop_victim(self) -> Node | None:
        """Remove and return the unreferenced node the policy ranks first."""
        heap = self._heap
        while heap:
            _, _, version, node = heapq.heappop(heap)
            if version != node.version or node.refs:
                self._stale -= 1
                continue
            del self.nodes[node.id]
            self.evictable_blocks -= node.blocks
            node.version = -1
            return node
        return None

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber live ones (keeps the heap O(candidates))."""
        if self._stale > 1024 and self._stale > len(self._heap) // 2:
            self._heap = [e for e in self._heap if e[2] == e[3].version and e[3].refs == 0]
            heapq.heapify(self._heap)
            self._stale = 0
