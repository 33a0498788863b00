"""AsymCache victim selection: two heaps against a scan of every candidate.

AsymCache (arXiv 2606.02964) evicts argmin f(τ)·ΔT. ``asymcache`` is
:class:`kvsim.simulator.policies.asymcache.AsymCache`: two heaps keyed by static K1 and K2, a
pop compares their heads at the current time (O(log n)). ``scan`` evaluates log(f(τ)·ΔT) for every
candidate and takes the minimum (O(n)), then removes it from its list. Both start from the same n
candidates, with costs drawn log-uniformly over 1–50 ms and last accesses uniformly over the 2·L
before now (half on each branch of f), and are checked to pick the same victims. A pop is timed
as the mean over a run of pops (fewer for the scan at large n); ``rebuild`` is the time to re-key
every candidate after a new L (a heapify of both heaps).

    python benchmarks/eviction_victim.py            # n = 10³ … 10⁶
    python benchmarks/eviction_victim.py --small    # n = 10³, 10⁴ (a smoke run)
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time

from kvsim.simulator.cache.prefix_tree import Node
from kvsim.simulator.policies.asymcache import AsymCache

L_S = 10.0
NOW_NS = 10**13
SCAN_BUDGET_S = 20.0  # the scan's pops at one n are capped to about this much wall time


def candidates(n: int, seed: int = 11) -> list[Node]:
    """n free nodes, released in order of last access (as the tree stamps them)."""
    rng = random.Random(seed)
    accesses = sorted(NOW_NS - int(rng.uniform(0, 2 * L_S) * 1e9) for _ in range(n))
    nodes = []
    for i, t in enumerate(accesses):
        cost = math.exp(rng.uniform(math.log(1e-3), math.log(5e-2)))
        node = Node(i, None, 0, 0, 512, 512, 32, t, cost)
        node.released = i + 1
        node.candidate = node.free = True
        nodes.append(node)
    return nodes


def scan_pop(nodes: list[Node], policy: AsymCache, now: int) -> Node:
    """The minimum of log(f(τ)·ΔT) over every candidate, removed from the list (swap with last)."""
    a, b, tau0 = policy.alpha_ns, policy.beta_ns, policy.tau0_ns
    best_i, best = 0, math.inf
    for i, x in enumerate(nodes):
        tau = now - x.last_access_ns
        v = math.log(x.recompute_s) + min(-tau / a, -(tau - tau0) / b)
        if v < best:
            best_i, best = i, v
    victim = nodes[best_i]
    nodes[best_i] = nodes[-1]
    nodes.pop()
    return victim


def measure(n: int, pops: int) -> tuple[float, float | None, int, float]:
    """µs per pop (two heaps), µs per pop (scan, or None), pops of the scan, rebuild ms."""
    policy = AsymCache(initial_l_s=L_S)
    nodes = candidates(n)
    for x in nodes:
        policy.add(x, NOW_NS)
    t0 = time.perf_counter()
    heap_victims = []
    for _ in range(pops):
        v = policy.pop(NOW_NS)
        v.candidate = False  # what the tree does with a victim
        heap_victims.append(v.id)
    heap_us = (time.perf_counter() - t0) / pops * 1e6

    # Rebuild with the remaining candidates: the cost of applying a new L.
    t0 = time.perf_counter()
    policy._rebuild()
    rebuild_ms = (time.perf_counter() - t0) * 1e3

    scan_nodes = candidates(n)
    t0 = time.perf_counter()
    scan_victims = [scan_pop(scan_nodes, policy, NOW_NS).id]  # one pop sizes the run
    one = time.perf_counter() - t0
    scan_pops = max(1, min(pops, int(SCAN_BUDGET_S / max(one, 1e-9))))
    t0 = time.perf_counter()
    for _ in range(scan_pops - 1):
        scan_victims.append(scan_pop(scan_nodes, policy, NOW_NS).id)
    scan_us = ((time.perf_counter() - t0) + one) / scan_pops * 1e6
    assert scan_victims == heap_victims[:scan_pops], "the scan and the heaps disagree"
    return heap_us, scan_us, scan_pops, rebuild_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="n ∈ {10³, 10⁴} only (smoke run)")
    ap.add_argument("--pops", type=int, default=2000, help="pops timed per n")
    args = ap.parse_args()
    sizes = (10**3, 10**4) if args.small else (10**3, 10**4, 10**5, 10**6)
    print(f"CPython {platform.python_version()}, {platform.machine()}, {_cpu()}")
    print("| n candidates | asymcache (µs/pop) | scan (µs/pop) | scan pops | rebuild (ms) |")
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        heap_us, scan_us, scan_pops, rebuild_ms = measure(n, min(args.pops, n // 2))
        print(f"| {n:,} | {heap_us:.2f} | {scan_us:,.0f} | {scan_pops} | {rebuild_ms:,.1f} |")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
