"""The prefix tree over content units and its eviction candidates.

Nodes are content units keyed by chain id (equal ids ⇒ identical prefix up to that unit, DESIGN §3),
so the tree is a dict from id to node, and a node knows its parent (the unit before it in the
chain). A node caches the *full* blocks of its unit: ceil is never taken, so a partial last unit of
a prompt keeps its last, partly filled block private to the request that computed it (vLLM caches
full blocks only), and block counts add up exactly.

A node that no request references is *free*; a free node is an eviction *candidate* when it may
leave now. Under the ``contiguous`` layout only leaves may leave (SGLang's radix cache evicts
leaves only): with every request holding a prefix of its chain, this keeps the resident set
prefix-closed — a node is never evicted while a deeper node of its chain is resident, whatever the
policy. Under ``msa`` every free node is a candidate: holes are recomputed.

Candidates are kept by a candidate set (DESIGN §9, S2): ``add(node, now_ns)`` when a node becomes
one, ``remove(node)`` when it stops being one (referenced again), ``pop(now_ns)`` for the victim. A
policy that only ranks gives ``key(node)`` and gets :class:`KeyedHeap`; a policy may own its set.
"""

from __future__ import annotations

import heapq
from typing import Any


class Node:
    """One content unit resident in a replica's KV cache."""

    __slots__ = (
        "id",
        "parent",
        "children",
        "depth",
        "start_token",
        "unit_tokens",
        "tokens",
        "blocks",
        "refs",
        "hits",
        "last_access_ns",
        "released",
        "pinned",
        "created_ns",
        "recompute_s",
        "free",
        "state",
        "candidate",
        "in_heap",
        "policy_data",
        "ready",
    )

    def __init__(
        self,
        node_id: int,
        parent: Node | None,
        depth: int,
        start_token: int,
        unit_tokens: int,
        tokens: int,
        blocks: int,
        now_ns: int,
        recompute_s: float,
    ):
        self.id = node_id
        """Chain id of the unit (the trace's hash id)."""
        self.parent = parent
        """The node of the unit before it in its chain, when that was resident at insert."""
        self.children = 0
        """Resident nodes whose parent this is (leaf ⇔ 0)."""
        self.depth = depth
        """Unit index in the prompt (0 = first unit)."""
        self.start_token = start_token
        """Position of the unit's first token in the prompt."""
        self.unit_tokens = unit_tokens
        """Tokens of the unit in the prompt; matching requires the same (content identity)."""
        self.tokens = tokens
        """Tokens cached: the unit's full blocks, ``blocks × block_tokens``."""
        self.blocks = blocks
        """Pool blocks held."""
        self.refs = 0
        """Requests using it now."""
        self.hits = 0
        """Times a request started to use it (insert included)."""
        self.last_access_ns = now_ns
        """When it was last in use: stamped at acquire and again at release."""
        self.released = 0
        """The tree's release counter when it was last released: vLLM's free-queue order."""
        self.pinned = False
        """Last released by an agent's call that a tool call follows (its job goes on)."""
        self.created_ns = now_ns
        """When it was inserted."""
        self.recompute_s = recompute_s
        """What recomputing it at its position costs (seconds), priced at insert."""
        self.free = False
        """Unreferenced (its blocks count as evictable)."""
        self.state = False
        """A recurrent-state checkpoint (the state after unit ``id``), not a unit's KV."""
        self.candidate = False
        """In the candidate set: may be evicted now."""
        self.in_heap = False
        """Has an entry in a :class:`KeyedHeap` (possibly stale)."""
        self.policy_data: Any = None
        """Per-node state an eviction policy keeps (its own structures' handles)."""
        self.ready = True
        """In a CPU tier: its copy from the GPU has arrived (it can be hit)."""

    def __repr__(self) -> str:
        return f"Node(id={self.id}, depth={self.depth}, tokens={self.tokens}, refs={self.refs})"


class KeyedHeap:
    """Candidates of a ranking policy, in a lazily re-keyed heap: the smallest ``key(node)`` is
    evicted first.

    NOTE (hot path): at most one entry per node; ``remove`` does nothing. When an entry surfaces,
    a node that is no longer a candidate is dropped (it is added again when it becomes one), and a
    node whose key has grown since its entry was pushed is pushed again with its current key. This
    is exact because a ranking key never decreases while a node is resident (LRU, LFU and FIFO
    keys grow with access time or count), and it avoids a stale entry per hit on hot prefixes.
    """

    def __init__(self, key):
        self.key = key
        self._heap: list[tuple] = []
        self._seq = 0

    def _push(self, node: Node, key: tuple) -> None:
        self._seq += 1
        # NOTE: a flat entry (key fields, seq, node) compares faster than a nested one.
        heapq.heappush(self._heap, (*key, self._seq, node))
        node.in_heap = True

    def add(self, node: Node, now_ns: int) -> None:
        if not node.in_heap:
            self._push(node, self.key(node))

    def remove(self, node: Node) -> None:
        pass  # lazy: dropped when it surfaces

    def pop(self, now_ns: int) -> Node | None:
        heap = self._heap
        key_of = self.key
        while heap:
            entry = heapq.heappop(heap)
            node = entry[-1]
            if not node.candidate:
                node.in_heap = False  # referenced again, or not a leaf yet: added anew later
                continue
            key = key_of(node)
            if key != entry[:-2]:
                self._push(node, key)  # accessed since it was pushed: its key grew
                continue
            node.in_heap = False
            return node
        return None


class PrefixTree:
    """Resident nodes by chain id, with the eviction candidates in a candidate set."""

    def __init__(self, candidates, leaf_only: bool, on_access=None):
        self.candidates = candidates
        self._add, self._remove, self._pop = candidates.add, candidates.remove, candidates.pop
        self.leaf_only = leaf_only
        self.nodes: dict[int, Node] = {}
        self.states: dict[int, Node] = {}
        """Recurrent-state checkpoints, by the chain id of the unit they follow."""
        self.states_stored = 0
        self.states_peak = 0
        self.state_ns = 0
        """The integral of resident checkpoints over time (checkpoint·ns) up to ``_state_t``."""
        self._state_t = 0
        self.evictable_blocks = 0
        """Blocks of free nodes: all of them can be evicted (leaves first under leaf_only)."""
        self.releases = 0
        """Releases so far (stamped on each released node)."""
        self._on_access = on_access

    def __len__(self) -> int:
        return len(self.nodes)

    def match_prefix(self, ids, prompt_tokens: int, unit_tokens: int) -> list[Node]:
        """The resident nodes of the longest cached prefix of a prompt's unit ids (contiguous).

        A node matches only where it was cached: at the same unit index, with as many tokens and
        (contiguous) after the same parent — a trace that reuses an id elsewhere, or a partial
        unit under a full unit's id, names another content."""
        out = []
        nodes = self.nodes
        rest = prompt_tokens
        parent = None
        for u, i in enumerate(ids):
            node = nodes.get(i)
            if (
                node is None
                or node.unit_tokens != (unit_tokens if rest > unit_tokens else rest)
                or node.depth != u
                or node.parent is not parent
            ):
                break
            out.append(node)
            parent = node
            rest -= unit_tokens
        return out

    def match_all(self, ids, prompt_tokens: int, unit_tokens: int) -> list[Node]:
        """Every resident node of a prompt's units, holes skipped (msa)."""
        out = []
        nodes = self.nodes
        last = len(ids) - 1
        tail = prompt_tokens - last * unit_tokens
        for u, i in enumerate(ids):
            node = nodes.get(i)
            if (
                node is not None
                and node.unit_tokens == (unit_tokens if u < last else tail)
                and node.depth == u
            ):
                out.append(node)
        return out

    def insert(
        self,
        node_id: int,
        parent: Node | None,
        depth: int,
        start_token: int,
        unit_tokens: int,
        tokens: int,
        blocks: int,
        now_ns: int,
        recompute_s: float = 0.0,
    ) -> Node:
        """Add a node (unreferenced: the caller acquires it)."""
        node = Node(node_id, parent, depth, start_token, unit_tokens, tokens, blocks, now_ns,
                    recompute_s)  # fmt: skip
        self.nodes[node_id] = node
        if parent is not None:
            parent.children += 1
            if parent.candidate and self.leaf_only:
                parent.candidate = False
                self._remove(parent)
        return node

    def insert_state(self, unit_id: int, parent: Node | None, depth: int, position: int,
                     blocks: int, now_ns: int) -> Node:  # fmt: skip
        """Add a free checkpoint: the recurrent state after unit ``unit_id`` (at ``position``)."""
        node = Node(unit_id, parent, depth, position, 0, 0, blocks, now_ns, 0.0)
        node.state = True
        self._states_change(now_ns)
        self.states[unit_id] = node
        self.states_stored += 1
        if len(self.states) > self.states_peak:
            self.states_peak = len(self.states)
        if parent is not None:
            parent.children += 1
            if parent.candidate and self.leaf_only:
                parent.candidate = False
                self._remove(parent)
        node.refs = 1
        self.release(node, now_ns)
        return node

    def drop(self, node: Node, now_ns: int) -> None:
        """Remove a free node the policy did not choose (an isolation cache's FIFO)."""
        if node.candidate:
            node.candidate = False
            self._remove(node)
        self._unlink(node, now_ns)

    def acquire(self, node: Node, now_ns: int) -> None:
        """A request starts to use ``node`` (a hit or its own insert)."""
        if node.free:
            self.evictable_blocks -= node.blocks
            node.free = False
            if node.candidate:
                node.candidate = False
                self._remove(node)
        if self._on_access is not None:
            self._on_access(node, now_ns, node.last_access_ns)
        node.refs += 1
        node.hits += 1
        node.last_access_ns = now_ns

    def release(self, node: Node, now_ns: int, pin: bool = False) -> None:
        """A request stops using ``node``: touched (vLLM orders its free queue by release), and a
        candidate once unreferenced (and, under leaf_only, a leaf)."""
        node.refs -= 1
        node.last_access_ns = now_ns
        self.releases += 1
        node.released = self.releases
        node.pinned = pin
        if node.refs == 0:
            node.free = True
            self.evictable_blocks += node.blocks
            if not (node.children and self.leaf_only):
                node.candidate = True
                self._add(node, now_ns)

    def pop_victim(self, now_ns: int) -> Node | None:
        """Remove and return the candidate the policy evicts first."""
        node = self._pop(now_ns)
        if node is not None:
            node.candidate = False
            self._unlink(node, now_ns)
        return node

    def _states_change(self, now_ns: int) -> None:
        self.state_ns += len(self.states) * (now_ns - self._state_t)
        self._state_t = now_ns

    def state_seconds(self, now_ns: int) -> float:
        """Resident checkpoints integrated over time up to ``now_ns`` (checkpoint·seconds)."""
        return (self.state_ns + len(self.states) * (now_ns - self._state_t)) / 1e9

    def _unlink(self, node: Node, now_ns: int) -> None:
        """Take a free node out of the tree (its parent may become a leaf candidate)."""
        node.free = False
        if node.state:
            self._states_change(now_ns)
            del self.states[node.id]
        else:
            del self.nodes[node.id]
        self.evictable_blocks -= node.blocks
        parent = node.parent
        if parent is not None:
            node.parent = None
            if self.nodes.get(parent.id) is parent:  # NOTE: parents are always KV units
                parent.children -= 1
                if self.leaf_only and parent.free and not parent.children:
                    parent.candidate = True
                    self._add(parent, now_ns)
