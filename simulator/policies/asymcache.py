"""AsymCache eviction: evict the candidate whose expected recompute cost is smallest now.

AsymCache (arXiv 2606.02964; DESIGN §5.1) values a cached unit B at time t by what losing it is
expected to cost, V_B(t) = f(τ_B) · ΔT_B, and evicts argmin_B V_B(t). ΔT_B is the cost to
recompute B at its position (``node.recompute_s``, priced by the replica's latency model at insert;
it grows with the context before B, so early units are cheap to lose and the Multi-Segment
Attention kernel reads around the holes: layout ``msa`` only). f is the probability that B is
reused after an idle time τ_B = t − t_last(B) (``node.last_access_ns``):

    f(τ) = min(e^(−τ/α), e^(−(τ−τ0)/β)),  α = −L / ln p,  β = α / r,  τ0 = L (1 − 1/r),

gentle up to τ = L (where both branches equal p) and r times steeper beyond. L is the P99 of the
reuse intervals observed so far (:class:`ReuseHistogram`); p = 0.5 and r = 40 by default.

Victim selection in O(log n). In logs, with t_ref a fixed time origin,

    log V_B(t) = min(K1_B − (t − t_ref)/α,  K2_B − (t − t_ref)/β),
    K1_B = log ΔT_B + (t_last − t_ref)/α,   K2_B = log ΔT_B + (t_last − t_ref + τ0)/β.

The min over B of a min of two terms is the smaller of the two minima, min_B K1_B − (t − t_ref)/α
and min_B K2_B − (t − t_ref)/β, and within each term the time part is the same for every B. So
the candidates sit in two heaps keyed by the static K1 and K2; a pop compares the two heads at the
current time and evicts the smaller: the head that wins attains the global minimum (its own
log V is at most the winning term). Neither key depends on the clock, only the comparison does.

Ties are broken as LRU breaks them, by ``node.released`` (smallest first): heap entries are
``(K, released, node)`` and the two heads are compared as ``(value, released)``. With every ΔT
equal, K1 and K2 are non-decreasing functions of t_last computed the same way for every node
(IEEE division and addition are monotone), and t_last is non-decreasing in ``released`` among free
nodes (a free node was last touched by its release), so both heaps are in ``released`` order and
the victim is exactly LRU's.

NOTE (hot path): like :class:`~kvsim.simulator.cache.prefix_tree.KeyedHeap`, each heap holds at
most one entry per node. A node's keys change only when it is released again (a new ``released``
and a later t_last: its keys grow) or when L changes (everything is rebuilt), so an entry whose
``released`` is stale is re-pushed with the current keys when it surfaces, and an entry of a node
that is no longer a candidate is dropped then.

L is re-estimated every ``reestimate_every`` observations and applied only when it moved by more
than ``l_tolerance`` (relative). A new L changes α, β, τ0 and so every key: both heaps are rebuilt
in O(n) (a heapify), at most once per ``reestimate_every`` observations, i.e. amortized
O(n / reestimate_every) per observation. The time origin t_ref moves to the rebuild time, which
keeps the keys' magnitudes near the candidates' idle times over β.

Victims depend on the clock (``time_dependent``): which of two candidates is worth less can change
as both idle, so evictions happen only at exact iteration boundaries.
"""

from __future__ import annotations

import gc
import heapq
import math
from bisect import bisect_right

from .eviction import EVICTION, EvictionContext

NS_PER_S = 1_000_000_000


class ReuseHistogram:
    """Counts of reuse intervals in log-spaced bins (bounded memory; an online P99).

    100 bins per decade from 1 µs to 10⁶ s (12 decades, 1200 bins, each 10^(1/100) ≈ 1.0233
    times as wide as the last: 2.33% resolution), plus one bin below 1 µs (including 0) and one at
    or above 10⁶ s. Bin k (1 ≤ k ≤ 1200) holds intervals in [e_(k−1), e_k) with
    e_i = 1000 ns · 10^(i/100). Counts accumulate over the whole run.
    """

    BINS_PER_DECADE = 100
    DECADES = 12
    LOW_NS = 1_000

    def __init__(self):
        n = self.BINS_PER_DECADE * self.DECADES
        self.edges_ns = [self.LOW_NS * 10 ** (i / self.BINS_PER_DECADE) for i in range(n + 1)]
        """Bin edges e_0 = 1 µs … e_1200 = 10⁶ s."""
        self.counts = [0] * (n + 2)
        """[below 1 µs, bin 1 … bin 1200, at or above 10⁶ s]."""
        self.total = 0

    def add(self, interval_ns: int) -> None:
        self.counts[bisect_right(self.edges_ns, interval_ns)] += 1
        self.total += 1

    def percentile_s(self, percent: int) -> float:
        """The upper edge of the bin holding the ⌈percent·total/100⌉-th smallest interval, in
        seconds: at most 2.33% above it (1 µs below the range, 10⁶ s above it). O(bins)."""
        if self.total == 0:
            raise ValueError("no intervals observed")
        rank = (percent * self.total + 99) // 100
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.edges_ns[min(i, len(self.edges_ns) - 1)] / NS_PER_S
        raise AssertionError("unreachable: counts add up to total")


def _positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


@EVICTION.register("asymcache")
class AsymCache:
    """Evict argmin f(τ)·ΔT (arXiv 2606.02964): two heaps, L re-estimated online (see module).

    Parameters: ``p`` (reuse probability at τ = L; 0 < p < 1), ``r`` (how much steeper f falls
    beyond L; r > 1), ``initial_l_s`` (L before the first estimate; default 60 s — it only lasts
    until ``reestimate_every`` idle reuses have been seen, a few seconds of a loaded replica, and a
    minute keeps the gentle branch over interactive reuse gaps), ``reestimate_every`` (observations
    between estimates) and ``l_tolerance`` (relative change of L below which it is kept).
    """

    time_dependent = True
    reads_recompute_cost = True
    layouts = ("msa",)

    def __init__(
        self,
        context: EvictionContext | None = None,
        p: float = 0.5,
        r: float = 40.0,
        initial_l_s: float = 60.0,
        reestimate_every: int = 1000,
        l_tolerance: float = 0.05,
    ):
        p, r = _positive_number("p", p), _positive_number("r", r)
        if not 0 < p < 1:
            raise ValueError(f"p must be in (0, 1), not {p!r}")
        if not r > 1:
            raise ValueError(f"r must be greater than 1, not {r!r}")
        initial_l_s = _positive_number("initial_l_s", initial_l_s)
        if not initial_l_s > 0:
            raise ValueError(f"initial_l_s must be positive, not {initial_l_s!r}")
        if isinstance(reestimate_every, bool) or not isinstance(reestimate_every, int):
            raise ValueError(f"reestimate_every must be an integer, not {reestimate_every!r}")
        if reestimate_every < 1:
            raise ValueError(f"reestimate_every must be at least 1, not {reestimate_every!r}")
        l_tolerance = _positive_number("l_tolerance", l_tolerance)
        if l_tolerance < 0:
            raise ValueError(f"l_tolerance must be non-negative, not {l_tolerance!r}")
        self.p, self.r = p, r
        self.reestimate_every = reestimate_every
        self.l_tolerance = l_tolerance
        self.histogram = ReuseHistogram()
        """Idle reuse intervals seen by :meth:`on_access`."""
        self.observations = 0
        self.rebuilds = 0
        """Times a new L was applied (each rebuilds both heaps)."""
        self._h1: list[tuple] = []  # (K1, released, node)
        self._h2: list[tuple] = []  # (K2, released, node)
        self._set_l(initial_l_s, 0)

    # ---- the reuse model ----------------------------------------------------------------------
    def _set_l(self, l_s: float, now_ns: int) -> None:
        self.l_s = l_s
        """The current L (seconds): the P99 of reuse intervals, or ``initial_l_s`` before one."""
        l_ns = l_s * NS_PER_S
        self.alpha_ns = -l_ns / math.log(self.p)
        self.beta_ns = self.alpha_ns / self.r
        self.tau0_ns = l_ns * (1 - 1 / self.r)
        self._t_ref = now_ns

    def value(self, node, now_ns: int) -> float:
        """f(τ)·ΔT of ``node`` at ``now_ns`` (what the heaps minimize; for tests and reports)."""
        tau = now_ns - node.last_access_ns
        log_f = min(-tau / self.alpha_ns, -(tau - self.tau0_ns) / self.beta_ns)
        return math.exp(log_f) * node.recompute_s

    def on_access(self, node, now_ns: int, prev_access_ns: int) -> None:
        """An idle reuse (a hit on an unreferenced node) is an observation of a reuse interval;
        an insert or a hit on a node in use is not (it was never idle, so never evictable)."""
        if node.hits == 0 or node.refs:
            return
        self.histogram.add(now_ns - prev_access_ns)
        self.observations += 1
        if self.observations % self.reestimate_every:
            return
        l_s = self.histogram.percentile_s(99)
        if abs(l_s - self.l_s) > self.l_tolerance * self.l_s:
            self._set_l(l_s, now_ns)
            self._rebuild()

    # ---- the two heaps --------------------------------------------------------------------------
    def _keys(self, node) -> tuple[float, float]:
        c = node.recompute_s
        log_c = math.log(c) if c > 0 else -math.inf  # a free unit is worth nothing: evict first
        dt = node.last_access_ns - self._t_ref
        return log_c + dt / self.alpha_ns, log_c + (dt + self.tau0_ns) / self.beta_ns

    def add(self, node, now_ns: int) -> None:
        flags = node.policy_data or 0
        if flags != 3:
            k1, k2 = self._keys(node)
            if not flags & 1:
                heapq.heappush(self._h1, (k1, node.released, node))
            if not flags & 2:
                heapq.heappush(self._h2, (k2, node.released, node))
            node.policy_data = 3

    def remove(self, node) -> None:
        pass  # lazy: dropped when it surfaces

    def _head(self, heap: list, which: int):
        """The valid head entry of heap ``which`` (1 or 2), dropping and re-keying lazily."""
        while heap:
            entry = heap[0]
            node = entry[2]
            if not node.candidate:
                heapq.heappop(heap)
                node.policy_data &= ~which
            elif node.released != entry[1]:  # released again since: its keys grew
                heapq.heapreplace(heap, (self._keys(node)[which - 1], node.released, node))
            else:
                return entry
        return None

    def pop(self, now_ns: int):
        e1 = self._head(self._h1, 1)
        if e1 is None:
            return None
        e2 = self._head(self._h2, 2)  # the same candidates: never None here
        dt = now_ns - self._t_ref
        v1, v2 = e1[0] - dt / self.alpha_ns, e2[0] - dt / self.beta_ns
        if (v1, e1[1]) <= (v2, e2[1]):
            heap, which, node = self._h1, 1, e1[2]
        else:
            heap, which, node = self._h2, 2, e2[2]
        heapq.heappop(heap)
        node.policy_data &= ~which  # its entry in the other heap is dropped when it surfaces
        return node

    def _rebuild(self) -> None:
        """Re-key every candidate after a change of L: O(n).

        NOTE (hot path): every candidate has exactly one entry in each heap, so one pass over the
        first finds them all; the keys are computed inline, and the cyclic garbage collector is
        paused while 2n new tuples are made (it would otherwise traverse the heaps repeatedly:
        about half the time at 10⁵ candidates)."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for entry in self._h2:
                entry[2].policy_data = 0
            a, b, tau0, t_ref, log = (
                self.alpha_ns,
                self.beta_ns,
                self.tau0_ns,
                self._t_ref,
                math.log,
            )
            h1, h2 = [], []
            for entry in self._h1:
                node = entry[2]
                if not node.candidate:
                    node.policy_data = 0
                    continue
                c = node.recompute_s
                log_c = log(c) if c > 0 else -math.inf
                dt = node.last_access_ns - t_ref
                h1.append((log_c + dt / a, node.released, node))
                h2.append((log_c + (dt + tau0) / b, node.released, node))
                node.policy_data = 3
            heapq.heapify(h1)
            heapq.heapify(h2)
            self._h1, self._h2 = h1, h2
        finally:
            if gc_was_enabled:
                gc.enable()
        self.rebuilds += 1
