"""Simulator speed and memory: whole `kvsim run` wall time, simulated requests per wall-second and
peak resident memory, side by side with another checkout (interleaved A/B rounds).

Two reference workloads (issue 17), their inputs generated deterministically into a temporary
folder (never committed):
- ``vidur``: 10,000 requests, 2,000 prompt / 256 output tokens, Poisson arrivals at 0.5 req/s, one
  Llama-2-70B replica with tensor parallel 2 on A100-80GB, a 512-token budget, no prefix caching
  (the workload Vidur's speed is usually quoted on, arXiv:2405.05465 §7);
- ``200k``: 200,000 synthetic Mooncake-format conversation requests on
  ``scenarios/mooncake_conversation.yaml`` (8 replicas, prefix-aware routing).

Each run is a fresh ``kvsim run`` process pinned to one core (``taskset -c 0``), so its wall time
includes start-up, imports and writing every output, and its peak RSS is its own. The runs see
Python's defaults for bytecode: ``PYTHONDONTWRITEBYTECODE`` is dropped from their environment and
one unmeasured run per side writes the ``.pyc`` caches first, as an installed kvsim has them
(otherwise every run would compile kvsim's modules from source again, about 0.1 s). With ``--base``
the same command runs from another checkout (its own ``.venv``) in alternating order per round,
and the outputs of the two sides are compared byte for byte (summary.json, requests.csv,
timeseries.csv, report.html).

    python benchmarks/sim_speed.py --base ../speed-base --rounds 5      # A/B, both workloads
    python benchmarks/sim_speed.py --workloads vidur --rounds 3         # this checkout only
    python benchmarks/sim_speed.py --small                              # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("summary.json", "requests.csv", "timeseries.csv", "report.html")

# Llama-2-70B's Hugging Face config.json (meta-llama/Llama-2-70b-hf), the fields kvsim reads.
LLAMA2_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

VIDUR_SCENARIO = """\
name: w_vidur
seed: 0
model: {model}
hardware: a100-80g
cluster: {{replicas: 1, tensor_parallel: 2}}
cache: {{block_size: 16, num_gpu_blocks: auto, gpu_memory_utilization: 0.9,
        enable_prefix_caching: false}}
scheduler: {{max_num_batched_tokens: 512, max_num_seqs: 256, enable_chunked_prefill: true}}
routing: round_robin
workload: {{type: trace, path: {trace}, format: vidur}}
"""


def vidur_trace(path: Path, n: int, rate_per_s: float = 0.5, seed: int = 0) -> None:
    """Write Vidur's processed-trace CSV: ``n`` requests of 2,000/256 tokens, Poisson arrivals."""
    rng = random.Random(seed)
    t = 0.0
    lines = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        lines.append(f"{t!r},2000,256")
    path.write_text("\n".join(lines) + "\n")


def mooncake_trace(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` Mooncake-format conversation requests (512-token hash blocks).

    The shape follows the Mooncake conversation trace: Poisson arrivals at its mean rate (12,031
    requests per hour), conversations whose turns extend the previous turn's blocks, a few shared
    system prompts, and lognormal new-input and output lengths."""
    rng = random.Random(seed)
    block = 512
    rate_per_s = 12_031 / 3600
    next_id = 0
    systems = []
    for _ in range(16):
        k = rng.randint(1, 6)
        systems.append(list(range(next_id, next_id + k)))
        next_id += k
    open_convs: list[list[int]] = []
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        if open_convs and rng.random() < 0.6:
            i = rng.randrange(len(open_convs))
            ids = open_convs[i]
        else:
            ids = list(systems[min(int(rng.paretovariate(1.2)) - 1, 15)])
            open_convs.append(ids)
            if len(open_convs) > 400:
                open_convs.pop(0)
        new_tokens = max(16, min(int(rng.lognormvariate(7.0, 1.0)), 30_000))
        prompt = len(ids) * block + new_tokens
        add = -(-new_tokens // block)
        ids.extend(range(next_id, next_id + add))
        next_id += add
        if len(ids) * block > 120_000:  # a conversation that outgrows the context ends
            open_convs.remove(ids)
        output = max(1, min(int(rng.lognormvariate(5.0, 0.8)), 2000))
        ts_ms = int(t * 1000)
        out.append(
            json.dumps(
                {
                    "timestamp": ts_ms,
                    "input_length": min(prompt, len(ids) * block),
                    "output_length": output,
                    "hash_ids": ids[:],
                }
            )
        )
    path.write_text("\n".join(out) + "\n")


def prepare(tmp: Path, workload: str, small: bool) -> tuple[list[str], int]:
    """The `kvsim run` arguments (after ``run``) and the request count of one workload."""
    if workload == "vidur":
        n = 1000 if small else 10_000
        cfg = tmp / "llama-2-70b" / "config.json"
        cfg.parent.mkdir(exist_ok=True)
        cfg.write_text(json.dumps(LLAMA2_70B))
        trace = tmp / "vidur.csv"
        vidur_trace(trace, n)
        scen = tmp / "w_vidur.yaml"
        scen.write_text(VIDUR_SCENARIO.format(model=cfg, trace=trace))
        return [str(scen)], n
    n = 5000 if small else 200_000
    trace = tmp / "mooncake_200k.jsonl"
    mooncake_trace(trace, n)
    scen = ROOT / "scenarios" / "mooncake_conversation.yaml"
    return [str(scen), "--set", f"workload.path={trace}"], n


def run_once(kvsim: Path, args: list[str], out: Path) -> dict:
    """One pinned `kvsim run`: wall seconds, CPU seconds and peak RSS (MiB) of that process."""
    cmd = ["taskset", "-c", "0", str(kvsim), "run", *args, "--out", str(out), "--force"]
    cmd += ["--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr.read().decode()}")
    p.stderr.close()
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_mib": ru.ru_maxrss / 1024,
    }


def engine(kvsim: Path) -> str:
    """Whether that side's install runs the compiled engine core (``kvsim.simulator.ENGINE``;
    code before it had none: "python")."""
    code = "import kvsim.simulator as s; print(getattr(s, 'ENGINE', 'python'))"
    p = subprocess.run([str(kvsim.parent / "python"), "-c", code], capture_output=True, text=True)
    return p.stdout.strip() or "?"


def same_bytes(a: Path, b: Path) -> dict[str, bool]:
    """Per output file: whether the two results folders hold identical bytes."""
    return {f: (a / f).read_bytes() == (b / f).read_bytes() for f in OUTPUTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="checkout to compare with (uses its .venv)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--workloads", default="vidur,200k", help="comma list of vidur, 200k")
    ap.add_argument("--small", action="store_true", help="quick smoke run (1k / 5k requests)")
    args = ap.parse_args()
    sides = {"B (this)": ROOT / ".venv" / "bin" / "kvsim"}
    if args.base:
        sides = {"A (base)": args.base.resolve() / ".venv" / "bin" / "kvsim", **sides}
    print("engine core: " + ", ".join(f"{s} {engine(k)}" for s, k in sides.items()))
    with tempfile.TemporaryDirectory(prefix="kvsim-speed-") as tmp_name:
        tmp = Path(tmp_name)
        print(
            f"{'workload':10}{'side':10}{'requests':>10}{'wall s':>9}{'cpu s':>8}"
            f"{'req/wall-s':>12}{'peak MiB':>10}   identical outputs"
        )
        for w in args.workloads.split(","):
            run_args, n = prepare(tmp, w, args.small)
            runs: dict[str, list[dict]] = {s: [] for s in sides}
            for s in sides:  # unmeasured: writes the bytecode caches
                run_once(sides[s], run_args, tmp / f"{w}-{s[0]}")
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for s in order:
                    runs[s].append(run_once(sides[s], run_args, tmp / f"{w}-{s[0]}"))
            ident = same_bytes(tmp / f"{w}-A", tmp / f"{w}-B") if args.base else {}
            for s in sides:
                wall = statistics.median(x["wall_s"] for x in runs[s])
                cpu = statistics.median(x["cpu_s"] for x in runs[s])
                peak = max(x["peak_mib"] for x in runs[s])
                same = ""
                if s.startswith("B") and ident:
                    same = ", ".join(f"{f}={'yes' if v else 'NO'}" for f, v in ident.items())
                print(
                    f"{w:10}{s:10}{n:>10}{wall:>9.2f}{cpu:>8.2f}{n / wall:>12,.0f}"
                    f"{peak:>10.0f}   {same}"
                )
        print(f"(medians of {args.rounds} interleaved rounds, one core each: taskset -c 0)")


if __name__ == "__main__":
    main()
