"""The prefix tree over content units and its eviction candidates.

Nodes are content units keyed by chain id (equal ids ⇒ identical prefix up to that unit, DESIGN §3),
so the tree is a dict from id to node: walking a request's ids from the start finds its cached
prefix. A node spans ceil(tokens / block_tokens) pool blocks. A node with no referencing request is
an eviction candidate, ranked by the eviction policy's key (smallest first).

NOTE (hot path): candidates sit in a heap with at most one entry per node, and entries are
re-keyed lazily. Acquiring a node does not touch the heap; when an entry surfaces, a node that is
referenced again is dropped from the heap (it is pushed again on release), and a node whose key has
grown since its entry was pushed is pushed again with its current key. This is exact because a
policy's key never decreases when a node is accessed (LRU, LFU, FIFO and AsymCache keys all grow
with the access time or count), and it avoids a stale entry per hit on hot prefixes.
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
        "in_heap",
        "counted",
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
        self.in_heap = False  # has an entry in the candidate heap
        self.counted = False  # its blocks are in evictable_blocks (unreferenced and resident)

    def __repr__(self) -> str:
        return f"Node(id={self.id}, depth={self.depth}, tokens={self.tokens}, refs={self.refs})"


class PrefixTree:
    """Resident nodes by chain id, with the unreferenced ones ranked for eviction."""

    def __init__(self, policy):
        self.policy = policy
        self.nodes: dict[int, Node] = {}
        self.evictable_blocks = 0
        self._heap: list[tuple] = []
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
        if node.counted:
            self.evictable_blocks -= node.blocks
            node.counted = False
        node.refs += 1
        node.hits += 1
        node.last_access_ns = now_ns
        if self._on_access is not None:
            self._on_access(node, now_ns)

    def _push(self, node: Node, key: tuple) -> None:
        self._seq += 1
        # NOTE: a flat entry (key fields, seq, node) compares faster than a nested one.
        heapq.heappush(self._heap, (*key, self._seq, node))
        node.in_heap = True

    def release(self, node: Node) -> None:
        """A request stops using ``node``; unreferenced nodes become eviction candidates."""
        node.refs -= 1
        if node.refs == 0:
            self.evictable_blocks += node.blocks
            node.counted = True
            if not node.in_heap:
                self._push(node, self.policy.key(node))

    def pop_victim(self) -> Node | None:
        """Remove and return the unreferenced node the policy ranks first."""
        heap = self._heap
        key_of = self.policy.key
        while heap:
            entry = heapq.heappop(heap)
            node = entry[-1]
            if node.refs:
                node.in_heap = False  # referenced again; pushed anew when released
                continue
            key = key_of(node)
            if key != entry[:-2]:
                self._push(node, key)  # accessed since it was pushed: its key grew
                continue
            node.in_heap = False
            node.counted = False
            del self.nodes[node.id]
            self.evictable_blocks -= node.blocks
            return node
        return None
