"""Checkpoint placement solve time: the O(N·n) convex-hull solver against an O(N²·n) DP.

The DP of Sparse Prefix Caching (arXiv 2605.05219) over a histogram of N bins with a budget of n
checkpoints. ``hull`` is :class:`kvsim.simulator.policies.checkpoint.PlacementTable` (pure Python;
it also answers every prompt length). ``quadratic`` is the straightforward DP with each layer
vectorized in numpy as an N × N matrix of candidates (min over s ≤ j), with back-pointers; it is
skipped where N²·n exceeds a work cap. Both costs are checked to agree. The histogram is seeded:
20·N depths drawn log-normally over the bins.

    python benchmarks/checkpoint_dp.py            # the full table
    python benchmarks/checkpoint_dp.py --small    # a quick smoke run
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from kvsim.simulator.policies.checkpoint import PlacementTable

QUADRATIC_WORK_CAP = 1024 * 1024 * 300  # N²·n candidate evaluations; larger cases are skipped


def histogram(bins: int, seed: int = 7) -> list[float]:
    rng = np.random.default_rng(seed)
    depth = rng.lognormal(mean=np.log(bins / 4), sigma=0.9, size=20 * bins)
    counts = np.bincount(np.minimum(depth.astype(int), bins), minlength=bins + 1)
    return counts.astype(float).tolist()


def quadratic(hist: list[float], n: int) -> tuple[list[int], float]:
    """dp[m][j] = min_{s ≤ j} dp[m−1][s−1] + cost(s, j), one N × N numpy matrix per layer."""
    p = np.asarray(hist, dtype=float)
    N = len(p) - 1
    P = np.concatenate(([0.0], np.cumsum(p[1:])))
    TP = np.concatenate(([0.0], np.cumsum(p[1:] * np.arange(1, N + 1))))
    s = np.arange(1, N + 1)
    below = np.tril(np.ones((N, N), dtype=bool), k=-1)  # rows s > columns j: not allowed
    dp, back = TP.copy(), []
    for _ in range(min(n, N)):
        intercept = dp[s - 1] - TP[s - 1] + s * P[s - 1]
        cand = intercept[:, None] - np.outer(s, P[1:])
        cand[below] = np.inf
        arg = np.argmin(cand, axis=0)
        dp = np.concatenate(([0.0], TP[1:] + cand[arg, np.arange(N)]))
        back.append(arg + 1)
    chosen, j = [], N
    for arg in reversed(back):
        if j == 0:
            break
        chosen.append(int(arg[j - 1]))
        j = chosen[-1] - 1
    return sorted(chosen), float(dp[N])


def timed(fn, *args) -> tuple[float, object]:
    """Best wall time of a few runs (one run if it takes over 0.2 s)."""
    t0 = time.perf_counter()
    out = fn(*args)
    best = time.perf_counter() - t0
    for _ in range(4 if best < 0.2 else 0):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="N ∈ {64, 256} only (smoke run)")
    args = ap.parse_args()
    sizes = (64, 256) if args.small else (64, 256, 1024, 2048)
    print(f"CPython {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print("| N bins | n | hull (ms) | quadratic (ms) | hull cost |")
    print("|---:|---:|---:|---:|---:|")
    for N in sizes:
        hist = histogram(N)
        for n in sorted({min(n, N) for n in (4, 16, 64, 300)}):
            hull_s, table = timed(PlacementTable, hist, n)
            cost = table.cost()
            if N * N * n <= QUADRATIC_WORK_CAP:
                quad_s, (_, quad_cost) = timed(quadratic, hist, n)
                assert abs(quad_cost - cost) <= 1e-9 * max(cost, 1.0), (N, n, quad_cost, cost)
                quad = f"{quad_s * 1e3:.1f}"
            else:
                quad = "skipped (N²·n over cap)"
            print(f"| {N} | {n} | {hull_s * 1e3:.1f} | {quad} | {cost:.6g} |")


if __name__ == "__main__":
    main()
