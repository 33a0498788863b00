"""Published eviction policies AsymCache is compared with: ``max_score`` and ``pensieve``.

Both score a candidate by a function of its idle time that is monotone within a class of
candidates sharing the function's other inputs, so each keeps one LRU-ordered heap per class and a
pop compares the class heads at the current time. Victims depend on the clock
(``time_dependent``).

- ``max_score`` — the workload-aware policy of "KVCache Cache in the Wild" (Wang et al., USENIX
  ATC '25, arXiv 2506.02634), as its authors implemented it for vLLM (vLLM pull request #22236,
  ``WorkloadAwareFreeKVCacheBlockQueue``, and its profiler ``benchmarks/profiler_utils.py``).
- ``pensieve`` — the retention value of Pensieve ("Stateful Large Language Model Serving with
  Pensieve", Yu, Lin and Li, EuroSys '25, arXiv 2312.05516, §4.3.1).
"""

from __future__ import annotations

import heapq
import math

from .eviction import EVICTION, EvictionContext

NS_PER_S = 1_000_000_000
_NEVER = math.inf  # no head: an empty class


class LruHeap:
    """Candidates of one class, least recently released first (``node.released``), in a lazy
    heap holding at most one entry per node.

    NOTE (hot path): a node may sit in several such heaps; ``bit`` is its flag in the integer
    ``node.policy_data`` ("has an entry here"). An entry whose node is no longer a candidate is
    dropped when it surfaces; one whose node was released again since is re-pushed then with its
    new ``released`` (which only grows), as in the tree's ``KeyedHeap``.
    """

    __slots__ = ("heap", "bit")

    def __init__(self, bit: int):
        self.heap: list[tuple[int, object]] = []
        self.bit = bit

    def push(self, node) -> None:
        if not node.policy_data & self.bit:
            heapq.heappush(self.heap, (node.released, node))
            node.policy_data |= self.bit

    def head(self):
        """The least recently released candidate, or None."""
        heap = self.heap
        while heap:
            released, node = heap[0]
            if not node.candidate:
                heapq.heappop(heap)
                node.policy_data &= ~self.bit
            elif node.released != released:
                heapq.heapreplace(heap, (node.released, node))
            else:
                return node
        return None

    def pop_head(self) -> None:
        """Remove the head :meth:`head` just returned."""
        _, node = heapq.heappop(self.heap)
        node.policy_data &= ~self.bit


@EVICTION.register("max_score")
class MaxScore:
    """Evict the candidate least likely to be reused in the coming window (arXiv 2506.02634).

    What the authors' implementation does (vLLM PR #22236): every request carries a workload tag
    (request type and turn, e.g. ``text_1``); free blocks wait in one LRU queue per workload; a
    profiler fits, per workload w, an exponential distribution to the reuse intervals of its
    blocks (rate λ_w) and the fraction p_w of its block accesses that are followed by a reuse; the
    victim is, among the queue heads only, the block with the lowest predicted probability of
    reuse within the upcoming time window. The paper's priority also ranks later prompt offsets
    (tail blocks) first among equals (its §5, as summarized by third-party reviews; not checked
    against the text).

    What this does: score(B, now) = p_c · e^(−λ_c·τ) · (1 − e^(−λ_c·W)), the probability that the
    next reuse of B falls within the window W after now given the exponential model, with τ the
    idle time of B (now − ``last_access_ns``). Within a class the score falls with τ, so only
    the LRU heads of the classes are compared, as in the PR: O(classes) a pop. Among the heads,
    the lowest score goes first, then the deepest (largest ``start_token``), then the least
    recently released; within a class, LRU order (a request releases its units deepest first).

    Approximations, where the simulator lacks what the paper used:
    - the class c of a node is its depth class ⌊log2(depth + 1)⌋ (units 0, 1–2, 3–6, 7–14, …):
      traces carry no request type or turn, and a later turn of a conversation sits deeper in the
      prompt;
    - λ_c and p_c are estimated online from :meth:`on_access` over the whole run (the PR profiles
      the first hour of its trace offline): λ_c = 1 / mean of the idle reuse intervals of class-c
      nodes (the maximum-likelihood rate; the PR's ``scipy.stats.expon.fit`` also fits a shift),
      p_c = reuses / (inserts + reuses) of class-c nodes; a class never reused scores 0 (the PR
      gives a never-reused workload rate 0, which makes its window probability 0);
    - an access to a node in use is not counted (it was never idle), and no short intervals are
      set aside (the PR drops reuses under 0.3 s as system-prompt hits);
    - the window W is ``window_s`` (default 60 s): the PR does not state its value.
    """

    time_dependent = True

    def __init__(self, context: EvictionContext | None = None, window_s: float = 60.0):
        if isinstance(window_s, bool) or not isinstance(window_s, (int, float)):
            raise ValueError(f"window_s must be a number, not {window_s!r}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be positive and finite, not {window_s!r}")
        self.window_s = float(window_s)
        self._queues: dict[int, LruHeap] = {}
        self.inserts: dict[int, int] = {}
        self.reuses: dict[int, int] = {}
        self.idle_s: dict[int, float] = {}
        """Per class: inserts, idle reuses and the sum of their intervals (seconds)."""

    @staticmethod
    def depth_class(node) -> int:
        return (node.depth + 1).bit_length() - 1

    def on_access(self, node, now_ns: int, prev_access_ns: int) -> None:
        c = self.depth_class(node)
        if node.hits == 0:
            self.inserts[c] = self.inserts.get(c, 0) + 1
        elif node.refs == 0:
            self.reuses[c] = self.reuses.get(c, 0) + 1
            self.idle_s[c] = self.idle_s.get(c, 0.0) + (now_ns - prev_access_ns) / NS_PER_S

    def log_score(self, c: int, idle_ns: int) -> float:
        """log of p_c · e^(−λ_c·τ) · (1 − e^(−λ_c·W)); −inf for a class never reused."""
        reuses = self.reuses.get(c, 0)
        if not reuses:
            return -math.inf
        # A mean of 0 (every reuse at the same nanosecond) is taken as the clock's resolution.
        rate = reuses / max(self.idle_s[c], 1 / NS_PER_S)
        p = reuses / (self.inserts.get(c, 0) + reuses)
        return (
            math.log(p) + math.log(-math.expm1(-rate * self.window_s)) - rate * (idle_ns / NS_PER_S)
        )

    def add(self, node, now_ns: int) -> None:
        if node.policy_data is None:
            node.policy_data = 0
        c = self.depth_class(node)
        queue = self._queues.get(c)
        if queue is None:
            queue = self._queues[c] = LruHeap(1)
        queue.push(node)

    def remove(self, node) -> None:
        pass  # lazy: dropped when it surfaces

    def pop(self, now_ns: int):
        best = best_key = best_queue = None
        for c, queue in self._queues.items():
            node = queue.head()
            if node is None:
                continue
            key = (
                self.log_score(c, now_ns - node.last_access_ns),
                -node.start_token,
                node.released,
            )
            if best_key is None or key < best_key:
                best, best_key, best_queue = node, key, queue
        if best is not None:
            best_queue.pop_head()
        return best


@EVICTION.register("pensieve")
class Pensieve:
    """Evict the lowest retention value ΔT / τ (Pensieve, arXiv 2312.05516, §4.3.1).

    Pensieve keeps conversations' KV in 32-token chunks and values a chunk by the cost of
    recomputing it — attention over the l tokens before it, linear in l, plus the token-wise
    layers — divided by the time T since its conversation was last accessed; it evicts the lowest
    value first. Recently active conversations stay, and within a conversation (one T) the leading
    chunks go first because recomputing them is cheapest; the dropped leading tokens are later
    recomputed in front of the cached rest, which needs multi-segment attention (``msa``).

    What this does: value(B, now) = ``node.recompute_s`` / (now − ``last_access_ns``), priced by
    the replica's latency model at insert; the lowest goes first, then the cheaper, then the
    least recently released (units of equal ΔT sit at the same position, so among units released
    together the deepest: a request releases deepest first). A unit idle for 0 ns is worth +inf
    (a zero-cost one 0). Approximations: a node (a content unit of the trace) stands for Pensieve's
    32-token chunk, and its own last use for its conversation's (traces name no conversations;
    a request releases its whole chain at once, so a request's units share one T, as a
    conversation's chunks do).

    Candidates of one recompute cost form a class, kept in one LRU heap: the class's oldest (its
    head) has its lowest value. The heads compete in a kinetic tournament (Basch, Guibas and
    Hershberger's kinetic data structures): a binary tree over the classes whose every node holds
    the winner of its two children and the time their order flips. Values c/(t − t_last) of two
    heads cross at most once as t grows, after which the cheaper wins for good. A pop processes
    the flips due by now (each re-plays a node and, if its winner changed, its ancestors), reads
    the root and, after the victim leaves, re-plays its class's path: O(log classes) plus the
    flips. Flips are scheduled a relative 10⁻¹² early (a recomputed winner stays until its next
    flip), so floating-point rounding of the crossing time never leaves a stale winner; a head
    reused since it was recorded is replaced when it wins. A new class is a new leaf; the tree
    doubles when full.
    """

    time_dependent = True
    reads_recompute_cost = True
    layouts = ("msa",)

    def __init__(self, context: EvictionContext | None = None):
        self._queues: list[LruHeap] = []  # the classes, in the order they appeared
        self._costs: list[float] = []  # their costs
        self._slot: dict[float, int] = {}  # cost → class index
        self._head_t: list[float] = []  # per class: its recorded head's last access (or never)
        self._head_r: list[int] = []  # per class: its recorded head's release stamp
        self._size = 1  # leaves of the tree (a power of two ≥ classes)
        self._win = [-1, -1]
        """Per tree node (node j has children 2j and 2j + 1; class k is leaf size + k): the
        winning class, or −1 where every class below is empty."""
        self._version = [0, 0]
        self._flips: list[tuple[float, int, int]] = []  # (time, node, version): lazy

    # ---- the kinetic tournament -----------------------------------------------------------------
    def _replay(self, j: int, now: int) -> bool:
        """Recompute node j's winner and next flip at ``now``; True if the winner changed.
        Heads go in order of (value, cost, release order)."""
        win = self._win
        a, b = win[2 * j], win[2 * j + 1]
        flip = math.inf
        if a < 0 or b < 0:
            w = b if a < 0 else a
        else:
            costs, head_t = self._costs, self._head_t
            ca, cb, ta, tb = costs[a], costs[b], head_t[a], head_t[b]
            va = 0.0 if ca == 0 else (ca / (now - ta) if now > ta else math.inf)
            vb = 0.0 if cb == 0 else (cb / (now - tb) if now > tb else math.inf)
            if (va, ca, self._head_r[a]) < (vb, cb, self._head_r[b]):
                w, cw, tw, cl, tl = a, ca, ta, cb, tb
            else:
                w, cw, tw, cl, tl = b, cb, tb, ca, ta
            if cl < cw:  # the cheaper loser overtakes once cl·(t − tw) ≤ cw·(t − tl)
                cross = (cw * tl - cl * tw) / (cw - cl)
                flip = max(math.floor(cross * (1 - 1e-12)) - 1, now + 1)
        changed = w != win[j]
        win[j] = w
        self._version[j] += 1
        if flip != math.inf:
            heapq.heappush(self._flips, (flip, j, self._version[j]))
        return changed

    def _set_leaf(self, k: int, now: int) -> None:
        """Record class k's current head (lazily cleaned) and re-play its path, as far as a
        winner other than class k stays."""
        head = self._queues[k].head()
        win = self._win
        if head is None:
            self._head_t[k], win[self._size + k] = _NEVER, -1
        else:
            self._head_t[k], self._head_r[k] = head.last_access_ns, head.released
            win[self._size + k] = k
        j = (self._size + k) // 2
        while j:
            before = win[j]
            if not self._replay(j, now) and before != k:
                break  # this node's winner, and so everything above, is unaffected
            j //= 2

    def _advance(self, now: int) -> None:
        """Process the flips due by ``now``."""
        flips, version = self._flips, self._version
        while flips and flips[0][0] <= now:
            _, j, v = heapq.heappop(flips)
            if v != version[j]:
                continue  # re-played since
            while j and self._replay(j, now):
                j //= 2
            # NOTE: an ancestor whose children's winners are unchanged keeps its winner and flip

    def _new_class(self, cost: float, now: int) -> int:
        k = len(self._costs)
        self._queues.append(LruHeap(1))
        self._costs.append(cost)
        self._head_t.append(_NEVER)
        self._head_r.append(0)
        self._slot[cost] = k
        if k == self._size:  # full: double and re-play every node
            size = self._size = 2 * self._size
            self._win = [-1] * size + [i if self._head_t[i] != _NEVER else -1 for i in range(k)]
            self._win += [-1] * (2 * size - len(self._win))
            self._version, self._flips = [0] * 2 * size, []
            for j in range(size - 1, 0, -1):
                self._replay(j, now)
        return k

    def add(self, node, now_ns: int) -> None:
        if node.policy_data is None:
            node.policy_data = 0
        k = self._slot.get(node.recompute_s)
        if k is None:
            k = self._new_class(node.recompute_s, now_ns)
        self._queues[k].push(node)
        if self._win[self._size + k] < 0 or node.released < self._head_r[k]:
            self._set_leaf(k, now_ns)  # a new head (under msa: only in a class that was empty)

    def remove(self, node) -> None:
        pass  # lazy: dropped when it surfaces

    def pop(self, now_ns: int):
        self._advance(now_ns)
        while True:
            k = self._win[1]
            if k < 0:
                return None
            queue = self._queues[k]
            head = queue.head()
            if head is not None and head.released == self._head_r[k]:
                queue.pop_head()
                self._set_leaf(k, now_ns)
                return head
            self._set_leaf(k, now_ns)  # its head was reused since: the next one competes
