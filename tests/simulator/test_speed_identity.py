"""Speed work keeps outputs byte-identical (issue 17): small slices of the two reference workloads
and the quickstart, run through `kvsim run`, against the SHA-256 of the files the pre-change code
(commit 1186477) wrote for the same inputs. (Report charts against plotly's own validated path:
test_figures.py.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kvsim.simulator.cli import main

ROOT = Path(__file__).resolve().parents[2]
DATA = ("summary.json", "requests.csv", "timeseries.csv")

# Written by commit 1186477's `kvsim run` on the inputs below (see _inputs).
EXPECTED = {
    "vidur": {
        "summary.json": "8e3eb4db4e3be1ee77f879b26754c8118120f87b1cf257cf0b652f1668686ce8",
        "requests.csv": "a5e7ff59ae330d02091c9846cbe76d365aaf125aa1a42e96245eb758f94471a0",
        "timeseries.csv": "52782349cc10cef6ce54755dcc23ede9d0014efb6576bb2dff1fc0c92c9e8238",
    },
    "mooncake": {
        "summary.json": "0f6162cc4879eee339d9a42322d3a1f85ac73067a0a79a7cd247597ed4cc4e50",
        "requests.csv": "e3a15c62d71711e7ad496b0e2b47ddefe208d831ccb3549b052adb2566058de5",
        "timeseries.csv": "26400de12e3e2d887927e58f3456bc9643e4d9ef826fac0c05a7d8badf7163b5",
    },
    "quickstart": {
        "summary.json": "7d4a512bfc00e1682d53b2274bd57078ab963d07bf1e9651cb14e7d88667470f",
        "requests.csv": "10b18458be6a3af7a46634e09284b5ec69a65f2538dacfc4f80c5d1383187425",
        "timeseries.csv": "4759985a16cdb0edbcba3d4b9c057ff0904c6ded914fcb4860a2e25952b8a427",
    },
}


def _inputs(tmp: Path, case: str) -> list[str]:
    """`kvsim run` arguments of one slice; its files are written under ``tmp``."""
    if case == "vidur":
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps({
            "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
            "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
            "vocab_size": 32000, "max_position_embeddings": 4096,
        }))  # fmt: skip
        rows = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
        rows += [f"{1.7 * i + (i % 7) * 0.1:.3f},2000,256" for i in range(150)]
        (tmp / "vidur.csv").write_text("\n".join(rows) + "\n")
        (tmp / "s.yaml").write_text(
            f"name: w_vidur\nseed: 0\nmodel: {cfg}\nhardware: a100-80g\n"
            "cluster: {replicas: 1, tensor_parallel: 2}\n"
            "cache: {block_size: 16, num_gpu_blocks: auto, enable_prefix_caching: false}\n"
            "scheduler: {max_num_batched_tokens: 512, max_num_seqs: 256}\n"
            f"workload: {{type: trace, path: {tmp / 'vidur.csv'}, format: vidur}}\n"
        )
        return [str(tmp / "s.yaml")]
    if case == "mooncake":
        # Conversations of 1-4 turns over 3 shared system prompts, each turn extending its blocks.
        lines, next_id, t_ms = [], 30, 0
        for c in range(60):
            ids = list(range(10 * (c % 3), 10 * (c % 3) + 1 + c % 4))
            for turn in range(1 + c % 4):
                t_ms += 97 + (c * 31 + turn * 17) % 400
                ids = ids + list(range(next_id, next_id + 1 + (c + turn) % 3))
                next_id += 1 + (c + turn) % 3
                prompt = len(ids) * 512 - (c * 13 + turn) % 500
                out = 1 + (c * 37 + turn * 11) % 300
                lines.append(json.dumps({"timestamp": t_ms, "input_length": prompt,
                                         "output_length": out, "hash_ids": ids}))  # fmt: skip
        (tmp / "m.jsonl").write_text("\n".join(lines) + "\n")
        scen = ROOT / "scenarios" / "mooncake_conversation.yaml"
        return [str(scen), "--set", f"workload.path={tmp / 'm.jsonl'}"]
    return [str(ROOT / "scenarios" / "quickstart.yaml"), "--set", "workload.requests=300"]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_run_outputs_match_pre_change_bytes(tmp_path, case):
    out = tmp_path / "out"
    assert main(["run", *_inputs(tmp_path, case), "--out", str(out), "--no-progress"]) == 0
    got = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in DATA}
    assert got == EXPECTED[case]
