"""Speed work keeps outputs byte-identical (issue 17): small slices of the two reference workloads
and the quickstart, run through `kvsim run`, against the SHA-256 of the files the pre-change code
(commit 1186477) wrote for the same inputs; and every shipped scenario against what the code
before the compiled engine (commit 3b50ba7) wrote for it. (Report charts against plotly's own
validated path: test_figures.py.)
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


# Written by commit 3b50ba7's `kvsim run` (the code before the compiled engine core, in-place
# boundaries, the compiled recorder and the orjson reader) on each shipped scenario as it is.
SHIPPED = {
    "agent_continuum": {
        "summary.json": "c2c0ae82377de07e28a06792b84f2e6215db5949ed3d257b418c826973b1f921",
        "requests.csv": "f6e1e2309b1fcfbc9bd9c88b72c3f7a2eeed371ae512e3dcb43c5571081b16ea",
        "timeseries.csv": "3514ea2e3686320f7d37e22913c8ab6e11c195268d4267edfacf8c79f34c70d0",
    },
    "asymcache_longbench": {
        "summary.json": "f9c7810455b8123e9cd6e17ece5fac614e28c94fa0035039ac3f38e3b7ca3b57",
        "requests.csv": "3bc8a0fd1545a05df69ebe0fae05e6e32abb9a9a5dec6b9a440d0c413b44cf7c",
        "timeseries.csv": "d2223f38fc485455e37da89ab5b0724b17d7a6784ee7d5ca08c673642d10d376",
    },
    "mooncake_conversation": {
        "summary.json": "fb954ffce836466d8579f9d7652d32a88d662cc0df2ad70694433c01a2868d3f",
        "requests.csv": "82a5253fc982edad467b5c66af1fd7f4a81130da5a4cb399ee4336ac73245ed9",
        "timeseries.csv": "fba0512a5f55429b89e6186dbea66fa2e68a09bb5329a09139b333217efe498d",
    },
    "quickstart": {
        "summary.json": "bb2036e2e302f7bb8e55425fe195555706038cf6e1d3ed14d25ed486674f77e0",
        "requests.csv": "8b25fa1d263caaadaa5f9bba3c18edf41cf7a58dac47f5bae6fdf35175f314e4",
        "timeseries.csv": "99d3fc40790a85c3020591a1091231dd07092047ca3ed0afbd5823036378676b",
    },
    "scd_bandwidth": {
        "summary.json": "b310de4e291430a3454a4a94e42356ddc9157a98a6d520f511d788bd09bda4c5",
        "requests.csv": "0bf945215165453ee1491b06e02e7c9f0ab4c105cb04e9903cf7bed647bf5de5",
        "timeseries.csv": "40d2e51c4137fa6aafacbe2bd37aa4a7745761c2190e5f88a92ac9ae7ae770d3",
    },
    "spc_quality": {
        "summary.json": "99c3e06f75bb1148ba827fca09ea078d74f48bfe7580caf48c59b403f36885ec",
        "requests.csv": "089df2b3b45405674044ccf926bd0c5840b1ede7368c98da4b6aea59de4e36aa",
        "timeseries.csv": "813c5df5b4d4963986a6dd4abe4010130c2df8245de970b7dc6d5fdeb33af4c0",
    },
    "spc_system_prompts": {
        "summary.json": "9dea6db60586bc0163d3f00fbab2be601427906279dae17769696b8c0caddf2b",
        "requests.csv": "efc7d823d1f35d3a4f59588e67e56710a60a860d869a9ce91de08f3fb46e491c",
        "timeseries.csv": "fe673373f6b3e2e91b5488df02db3869311211ff01fd46d1d10a0bde36aacdc4",
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


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scenarios_match_pre_change_bytes(tmp_path, name):
    out = tmp_path / "out"
    scenario = ROOT / "scenarios" / f"{name}.yaml"
    assert main(["run", str(scenario), "--out", str(out), "--no-progress"]) == 0
    got = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in DATA}
    assert got == SHIPPED[name]
