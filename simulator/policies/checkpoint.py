"""Checkpoint placement: where exact recurrent-layer states are stored along a prompt.

Sparse Prefix Caching for hybrid and recurrent models (arXiv 2605.05219; the authors' placement
code is ``sparse_prefix_caching/strategies.py`` in arabel1a/hybrid-logarithmic-cache). Attention
KV is kept per token, but an SSM / linear-attention layer can resume only from a stored state: a
hit of depth d tokens resumes from c(d), the deepest checkpoint ≤ d, and the d − c(d) tokens after
it are recomputed in all layers (no checkpoint ≤ d: full recompute). A checkpoint costs a whole
state (hundreds of tokens' worth of KV), so where a budget of checkpoints goes matters.

A policy answers ``positions(prompt_tokens) -> tuple[int, ...]``: the sorted token positions
0 < p ≤ prompt_tokens at which the state (after the first p tokens) is stored when that prompt is
prefilled. A policy that learns also defines ``observe(depth_tokens)``: the cache reports, for each
arriving request, how many tokens of its prefix matched something cached (0 for a miss).

Registered: ``none``; ``every(k)`` (block caching); ``balanced(n)``; ``sqrt``;
``log2(start_tokens=64)``; ``dp(n, gamma=0.99, resolve_every=10, bin_tokens=64)`` (the paper's
distribution-aware placement, solved by :class:`PlacementTable`). The heuristics' rules follow the
authors' code, each stated in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .registry import Registry

CHECKPOINT = Registry("checkpoint", interfaces=({"positions": 1},), field="cache.checkpoint")


class CheckpointPolicy(Protocol):
    def positions(self, prompt_tokens: int) -> tuple[int, ...]: ...


def _check_int(param: str, value, minimum: int) -> int:
    # A ValueError: the registry turns it into one line naming the field and the policy.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{param} = {value!r}; allowed: an integer ≥ {minimum}")
    return value


# ---------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------


class PlacementTable:
    """Optimal placements of ≤ n checkpoints over a depth histogram, for every prompt length.

    Units are bins. ``hist[t]`` (t = 0..N, N = len(hist) − 1) is the mass of overlap depths in bin
    t; with bins of B tokens, bin t holds depths d with ⌊d / B⌋ = t, and a checkpoint in bin
    s ∈ 1..N is stored at token s·B. As c(d) = s·B ≤ d exactly when s ≤ t, a depth in bin t loses
    d − c(d) = B·(t − c(t)) + (d mod B) tokens, where c(t) is the deepest chosen bin ≤ t (0 if
    none): the remainder does not depend on the placement, so minimizing in bins is exact among
    placements on multiples of B. Bin 0 (depths < B) cannot be served; its mass enters nothing.

    The cost of a set S of bins is C(S) = Σ_t hist[t]·(t − c(t)) (mass-weighted lost bins; the
    expectation when hist sums to 1). With P[j] = Σ_{t=1..j} hist[t], TP[j] = Σ_{t=1..j} t·hist[t]
    (P[0] = TP[0] = 0) and cost(s, j) = (TP[j] − TP[s−1]) − s·(P[j] − P[s−1]), the least cost of
    depths in bins 1..j with ≤ m checkpoints in 1..j is dp[0][j] = TP[j], dp[m][0] = 0,
    dp[m][j] = min_{1≤s≤j} dp[m−1][s−1] + cost(s, j). Each candidate is TP[j] + (b_s − s·P[j])
    with b_s = dp[m−1][s−1] − TP[s−1] + s·P[s−1]: a line of slope −s at x = P[j]. Slopes fall as
    s grows and x never falls (hist ≥ 0), so a monotone convex-hull deque gives each layer in
    O(N): O(N·n) in all.

    A prompt of j bins can hold checkpoints in bins 1..j only; a deeper hit on it resumes from its
    last checkpoint, so depths in bins t > j lose (t − j) + (j − c(j)). Minimizing the same cost
    C over placements confined to 1..j therefore changes only the last layer: its query point is
    x = P[N] for every j, and cost_j = TP[N] + min_{s≤j} (b_s − s·P[N]) is a prefix minimum. One
    solve thus answers every prompt length; j = N is the unconfined optimum.

    Among optimal placements, a chosen checkpoint whose served bins (up to the next checkpoint,
    or to N for the last) hold no mass is dropped: it would cost memory and save nothing. Which
    of several optimal placements is returned is deterministic but not specified.
    """

    def __init__(self, hist: Sequence[float], n: int):
        """Solve for ≤ ``n`` checkpoints over ``hist`` (non-negative, finite masses)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"checkpoint budget n = {n!r}; allowed: an integer ≥ 0")
        p = [float(w) for w in hist]
        for t, w in enumerate(p):
            if not (w >= 0.0 and math.isfinite(w)):
                raise ValueError(f"histogram bin {t} has mass {w!r}; allowed: finite and ≥ 0")
        N = max(len(p) - 1, 0)
        P, TP = [0.0] * (N + 1), [0.0] * (N + 1)
        acc = tacc = 0.0
        for t in range(1, N + 1):
            acc += p[t]
            tacc += t * p[t]
            P[t], TP[t] = acc, tacc
        # next_mass[t]: the first bin ≥ t with positive mass (N + 1 if none), to test segments.
        next_mass = [N + 1] * (N + 2)
        for t in range(N, 0, -1):
            next_mass[t] = t if p[t] > 0.0 else next_mass[t + 1]
        self.bins_total = N
        """N: the deepest bin of the histogram."""
        self.budget = min(n, N)
        """Layers solved: ≤ n checkpoints, never more than there are bins."""
        self._P, self._TP, self._next_mass = P, TP, next_mass
        self._back: list[list[int]] = []  # _back[m − 1][j]: dp[m][j]'s last checkpoint, m < budget
        dp = TP
        for _ in range(1, self.budget):
            dp, arg = self._hull_layer(dp)
            self._back.append(arg)
        # The last layer, confined to 1..j: prefix minimum of the lines at x = P[N].
        self._last_arg = [0] * (N + 1)
        self._last_val = [0.0] * (N + 1)
        if self.budget:
            x, best, arg = P[N], math.inf, 0
            for s in range(1, N + 1):
                v = dp[s - 1] - TP[s - 1] + s * P[s - 1] - s * x
                if v <= best:  # ties: the deeper line, as in the hull layers
                    best, arg = v, s
                self._last_arg[s], self._last_val[s] = arg, best

    def _hull_layer(self, prev: list[float]) -> tuple[list[float], list[int]]:
        """dp[m] and its argmins from dp[m − 1] (``prev``), by the monotone hull trick."""
        P, TP, N = self._P, self._TP, self.bins_total
        cur, arg = [0.0] * (N + 1), [0] * (N + 1)
        slopes: list[int] = []  # line s: y = intercepts[i] − slopes[i]·x; the deque is [head:]
        intercepts: list[float] = []
        head = 0
        for j in range(1, N + 1):
            b = prev[j - 1] - TP[j - 1] + j * P[j - 1]
            # NOTE: the back line is useless once the new (steeper) line overtakes the one before
            # it no later than the back line does: (b − b1)(s2 − s1) ≤ (b2 − b1)(j − s1).
            while len(slopes) - head >= 2:
                s1, b1, s2, b2 = slopes[-2], intercepts[-2], slopes[-1], intercepts[-1]
                if (b - b1) * (s2 - s1) <= (b2 - b1) * (j - s1):
                    slopes.pop()
                    intercepts.pop()
                else:
                    break
            slopes.append(j)
            intercepts.append(b)
            x = P[j]
            # Queries only move right, so a front line beaten (or tied) now is never best again.
            last = len(slopes) - 1
            while head < last and (
                intercepts[head] - slopes[head] * x >= intercepts[head + 1] - slopes[head + 1] * x
            ):
                head += 1
            cur[j] = TP[j] + intercepts[head] - slopes[head] * x
            arg[j] = slopes[head]
        return cur, arg

    def cost(self, j: int | None = None) -> float:
        """Least C (mass-weighted lost bins, all depths) with checkpoints in bins 1..j (all)."""
        j = self.bins_total if j is None else min(j, self.bins_total)
        if self.budget == 0 or j <= 0:
            return self._TP[self.bins_total]
        return self._TP[self.bins_total] + self._last_val[j]

    def bins(self, j: int | None = None) -> list[int]:
        """The chosen bins (sorted) of an optimal placement confined to bins 1..j (all)."""
        N = self.bins_total
        j = N if j is None else min(j, N)
        if self.budget == 0 or j <= 0:
            return []
        s = self._last_arg[j]
        chosen = [s]
        for m in range(self.budget - 1, 0, -1):
            if s <= 1:
                break
            s = self._back[m - 1][s - 1]
            chosen.append(s)
        chosen.reverse()
        ends = [nxt - 1 for nxt in chosen[1:]] + [N]
        return [s for s, end in zip(chosen, ends, strict=True) if self._next_mass[s] <= end]


def solve_placement(hist: Sequence[float], n: int) -> tuple[list[int], float]:
    """Bins of ≤ ``n`` checkpoints minimizing Σ_t hist[t]·(t − c(t)), and that least cost.

    Units and definitions: :class:`PlacementTable`. O(len(hist)·n) time.
    """
    table = PlacementTable(hist, n)
    return table.bins(), table.cost()


# ---------------------------------------------------------------------------------------------
# The policies
# ---------------------------------------------------------------------------------------------


@CHECKPOINT.register("none")
class NoCheckpoints:
    """No recurrent states are stored: every hit recomputes from the start."""

    def positions(self, prompt_tokens: int) -> tuple[int, ...]:
        return ()


@CHECKPOINT.register("every")
class Every:
    """Block caching: a state every ``k`` tokens, at k, 2k, … ≤ T (vLLM's per-block states)."""

    def __init__(self, k: int):
        self.k = _check_int("k", k, 1)
        """Spacing in tokens."""

    def positions(self, prompt_tokens: int) -> tuple[int, ...]:
        return tuple(range(self.k, prompt_tokens + 1, self.k))


def _balanced(prompt_tokens: int, n: int) -> tuple[int, ...]:
    step = max(1, prompt_tokens // (n + 1))
    return tuple(i * step for i in range(1, n + 1) if i * step <= prompt_tokens)


@CHECKPOINT.register("balanced")
class Balanced:
    """``n`` states evenly spaced: i·⌊T / (n + 1)⌋ for i = 1..n, or 1..min(n, T) when T ≤ n
    (the authors' ``balanced_fix_nblocks``)."""

    def __init__(self, n: int):
        self.n = _check_int("n", n, 0)
        """Checkpoints per prompt."""

    def positions(self, prompt_tokens: int) -> tuple[int, ...]:
        return _balanced(prompt_tokens, self.n) if self.n else ()


@CHECKPOINT.register("sqrt")
class Sqrt:
    """A state every ⌊√T⌋ tokens: ⌊√T⌋, 2⌊√T⌋, … ≤ T, about √T of them (the authors' ``sqrt``)."""

    def positions(self, prompt_tokens: int) -> tuple[int, ...]:
        if prompt_tokens < 1:
            return ()
        step = math.isqrt(prompt_tokens)
        return tuple(range(step, prompt_tokens + 1, step))


@CHECKPOINT.register("log2")
class Log2:
    """States at the powers of two 2^i with ``start_tokens`` ≤ 2^i ≤ T: ⌊log2 T⌋ + 1 at most.

    The authors' logarithmic ("dyadic") cache stores 1, 2, 4, …, 2^⌊log2 T⌋ from ``start_at`` on,
    then floors positions to their 64-token kernel chunk; the default ``start_tokens`` = 64 gives
    the same positions (those below 64 floor to nothing).
    """

    def __init__(self, start_tokens: int = 64):
        self.start_tokens = _check_int("start_tokens", start_tokens, 1)
        """The shallowest position considered (tokens)."""

    def positions(self, prompt_tokens: int) -> tuple[int, ...]:
        out, p = [], 1
        while p <= prompt_tokens:
            if p >= self.start_tokens:
                out.append(p)
            p *= 2
        return tuple(out)


@CHECKPOINT.register("dp")
class DistributionAware:
    """≤ ``n`` states placed to minimize the expected recompute E_{d∼p}[d − c(d)] (arXiv
    2605.05219), p the observed overlap-depth histogram in bins of ``bin_tokens``.

    Online, as the authors' ``histogram_exp_decay`` tracker: each observation first multiplies the
    whole histogram by ``gamma``, then adds 1 to its bin ⌊depth / bin_tokens⌋; after every
    ``resolve_every``-th observation the placement is re-solved (:class:`PlacementTable`) and held
    until the next solve. A prompt of T tokens gets the optimal placement confined to bins
    1..⌊T / bin_tokens⌋, stored at token s·bin_tokens for each chosen bin s. Until the first
    solve: ``balanced(n)`` positions floored to multiples of ``bin_tokens`` (zeros dropped).
    """

    def __init__(self, n: int, gamma: float = 0.99, resolve_every: int = 10, bin_tokens: int = 64):
        self.n = _check_int("n", n, 0)
        """Checkpoint budget per prompt."""
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            raise ValueError(f"gamma = {gamma!r}; allowed: a number in (0, 1]")
        self.gamma = float(gamma)
        """Decay applied to the histogram per observation (1: no decay)."""
        self.resolve_every = _check_int("resolve_every", resolve_every, 1)
        """Observations between solves."""
        self.bin_tokens = _check_int("bin_tokens", bin_tokens, 1)
        """Histogram bin width, and the granularity of positions (tokens)."""
        self.observations = 0
        """Depths observed so far."""
        self.solves = 0
        """Placements solved so far."""
        self._hist = np.zeros(1)
        self._table: PlacementTable | None = None
        self._by_bins: dict[int, tuple[int, ...]] = {}  # positions per prompt bin, this solve

    @property
    def histogram(self) -> list[float]:
        """The decayed mass per bin (index = ⌊depth / bin_tokens⌋), as of now."""
        return self._hist.tolist()

    def observe(self, depth_tokens: int) -> None:
        """Count an arriving request's overlap depth; re-solve on every ``resolve_every``-th."""
        if depth_tokens < 0:
            raise ValueError(f"overlap depth {depth_tokens} tokens is negative")
        t = depth_tokens // self.bin_tokens
        if t >= len(self._hist):
            self._hist = np.concatenate([self._hist, np.zeros(t + 1 - len(self._hist))])
        self._hist *= self.gamma
        self._hist[t] += 1.0
        self.observations += 1
        if self.observations % self.resolve_every == 0:
            self._table = PlacementTable(self._hist.tolist(), self.n)
            self._by_bins.clear()
            self.solves += 1

    def positions(self, prompt_tokens: int) -> tuple[int, ...]:
        B = self.bin_tokens
        if self._table is None:
            floored = {p // B * B for p in _balanced(prompt_tokens, self.n)} if self.n else ()
            return tuple(sorted(p for p in floored if p > 0))
        j = min(max(prompt_tokens // B, 0), self._table.bins_total)
        out = self._by_bins.get(j)
        if out is None:
            out = self._by_bins[j] = tuple(s * B for s in self._table.bins(j))
        return out
