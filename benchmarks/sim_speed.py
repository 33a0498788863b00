"""Simulator speed and memory: simulated requests per wall-second and peak resident memory.

Each case runs in a fresh subprocess (so peak RSS is its own) on one core:
- the Mooncake conversation trace (12,031 requests) with the shipped 8-replica scenario;
- synthetic chat workloads of 50k and 200k requests on 8 replicas (the same shape, so the memory
  column shows whether memory grows with trace length).

    python benchmarks/sim_speed.py            # full table
    python benchmarks/sim_speed.py --small    # a quick smoke run (5k synthetic requests)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SYNTHETIC = {
    "name": "synthetic_chat",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "cluster": {"replicas": 8},
    "routing": "least_loaded",
    "workload": {
        "type": "synthetic",
        "requests": 0,
        "rate": 60.0,
        "arrival": "poisson",
        "prompt_tokens": {"type": "lognormal", "median": 600, "sigma": 0.8, "max": 8000},
        "output_tokens": {"type": "lognormal", "median": 120, "sigma": 0.7, "max": 1000},
        "shared_prefix": {"prefixes": 16, "tokens": 1024},
        "unit_tokens": 256,
    },
}


def _child(kind: str, n: int) -> None:
    from kvsim.simulator import load_scenario, scenario_from_dict, simulate

    if kind == "mooncake":
        s = load_scenario(ROOT / "scenarios" / "mooncake_conversation.yaml")
    else:
        doc = json.loads(json.dumps(SYNTHETIC))
        doc["workload"]["requests"] = n
        s = scenario_from_dict(doc)
    t0 = time.perf_counter()
    res = simulate(s)
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "requests": res.summary["requests"],
                "wall_s": wall,
                "peak_mib": peak_mib,
                "iterations": res.summary["iterations"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="quick smoke run")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    cases = (
        [("synthetic", 5000)]
        if args.small
        else [("mooncake", 0), ("synthetic", 50_000), ("synthetic", 200_000)]
    )
    print(
        f"{'case':28}{'requests':>10}{'iterations':>12}{'wall s':>9}{'req/s':>10}{'peak MiB':>10}"
    )
    for kind, n in cases:
        out = subprocess.run(
            ["taskset", "-c", "0", sys.executable, __file__, "--child", kind, str(n)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        label = "mooncake_conversation" if kind == "mooncake" else f"synthetic {n // 1000}k"
        print(
            f"{label:28}{r['requests']:>10}{r['iterations']:>12}{r['wall_s']:>9.1f}"
            f"{r['requests'] / r['wall_s']:>10,.0f}{r['peak_mib']:>10.0f}"
        )


if __name__ == "__main__":
    main()
