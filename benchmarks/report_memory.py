"""Peak memory and time of writing a run's results (report.html above all) at 200k and 1M requests.

Each case runs in a fresh subprocess (so peak RSS is its own), pinned to one core: a synthetic
chat workload on 8 replicas is simulated, then every result file is written as ``kvsim run``
writes them. The table shows the peak resident set after the simulation, after ``report_html``
and after every file, and the time ``report_html`` takes alone: a report built from bounded,
downsampled series keeps the peak after the report at the simulation's.

    python benchmarks/report_memory.py            # 200k and 1M requests (a few minutes)
    python benchmarks/report_memory.py --small    # a quick smoke run (5k requests)
    python benchmarks/report_memory.py --requests 1000 50000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim_speed import SYNTHETIC


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(n: int) -> None:
    from kvsim.simulator import scenario_from_dict, simulate
    from kvsim.simulator.output import write_results
    from kvsim.simulator.report import report_html

    doc = json.loads(json.dumps(SYNTHETIC))
    doc["workload"]["requests"] = n
    scenario = scenario_from_dict(doc)
    t0 = time.perf_counter()
    res = simulate(scenario)
    sim_s = time.perf_counter() - t0
    after_sim = _peak_mib()
    t0 = time.perf_counter()
    page = report_html(res, scenario)
    report_s = time.perf_counter() - t0
    after_report = _peak_mib()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_results(Path(tmp) / "run", scenario, res)
        write_s = time.perf_counter() - t0
    print(json.dumps({
        "requests": res.summary["requests"], "sim_s": sim_s, "peak_sim_mib": after_sim,
        "report_s": report_s, "peak_report_mib": after_report, "write_s": write_s,
        "peak_mib": _peak_mib(), "report_bytes": len(page.encode()),
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="quick smoke run")
    ap.add_argument("--requests", type=int, nargs="+", metavar="N", help="cases (requests)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    cases = args.requests or ([5000] if args.small else [200_000, 1_000_000])
    print(
        f"{'requests':>10}{'simulate s':>12}{'peak after sim MiB':>20}{'report_html s':>15}"
        f"{'peak after report MiB':>23}{'all files s':>13}{'peak MiB':>10}{'report MB':>11}"
    )
    for n in cases:
        out = subprocess.run(
            ["taskset", "-c", "0", sys.executable, __file__, "--child", str(n)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{r['requests']:>10}{r['sim_s']:>12.1f}{r['peak_sim_mib']:>20.0f}"
            f"{r['report_s']:>15.2f}{r['peak_report_mib']:>23.0f}{r['write_s']:>13.2f}{r['peak_mib']:>10.0f}"
            f"{r['report_bytes'] / 1e6:>11.2f}"
        )


if __name__ == "__main__":
    main()
