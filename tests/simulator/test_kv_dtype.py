"""cache.kv_cache_dtype: fp8 (one byte a cached element: twice the KV blocks in the same memory,
half the bytes attention reads) and scheduler.max_model_len (vLLM's: longer requests dropped, a
replica's KV cache must hold one)."""

from __future__ import annotations

import pytest
from helpers import ROOT, scenario_doc, write_kvsim_trace

from kvsim.simulator import load_scenario, scenario_from_dict, simulate
from kvsim.simulator.catalog import get_gpu, get_model, with_kv_cache_dtype
from kvsim.simulator.cli import main
from kvsim.simulator.cluster import Cluster, kv_capacity_blocks
from kvsim.simulator.latency.ops import Attention, attention_op

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def test_fp8_halves_the_bytes_of_a_token_and_doubles_the_blocks():
    bf16 = get_model("llama-3.1-8b")
    fp8 = with_kv_cache_dtype(bf16, "fp8")
    assert with_kv_cache_dtype(bf16, "auto") == bf16
    # Llama-3.1-8B: 32 layers × 2 × 8 KV heads × 128 = 65,536 elements a token.
    assert (bf16.kv_bytes_per_token, fp8.kv_bytes_per_token) == (131072, 65536)
    assert fp8.kv_bytes_per_token_rank(2) == 32768 and fp8.dtype_bytes == 2  # weights stay bf16
    s = load_scenario(QUICKSTART)
    gpu = get_gpu("h100-sxm")
    c16, c8 = kv_capacity_blocks(s, bf16, gpu), kv_capacity_blocks(s, fp8, gpu)
    # blocks = ⌊⌊available / page⌋ / layers⌋ − 1 with the page halved: 2(c + 1) − 1 … 2(c + 1)+1
    assert c16 == 28239 and 2 * (c16 + 1) - 1 <= c8 <= 2 * (c16 + 1) + 1
    assert Cluster(load_scenario(QUICKSTART, ["cache.kv_cache_dtype=fp8"])).capacity == c8


def test_attention_reads_fp8_kv_in_bytes():
    """32 query tokens over 4,096 KV tokens, 32 heads of 128 (TP 1): KV 4,096 × 2,048 elements
    of 1 byte; queries and outputs 2 × 32 × 32 × 128 of 2 bytes."""
    fp8 = with_kv_cache_dtype(get_model("llama-3.1-8b"), "fp8")
    op = attention_op(fp8, 1, 32, 4096, 4096 * 32, 1, 1)
    assert isinstance(op, Attention) and op.kv_dtype_bytes == 1
    assert op.bytes() == 4096 * 2048 * 1 + 2 * 32 * 32 * 128 * 2
    assert "kv_dtype_bytes" not in op.features() and "dtype_bytes" not in op.features()
    bf16 = attention_op(get_model("llama-3.1-8b"), 1, 32, 4096, 4096 * 32, 1, 1)
    assert bf16.bytes() - op.bytes() == 4096 * 2048 and bf16.flops() == op.flops()


def _long_decodes(tmp_path, **over):
    rows = [{"arrival_s": 0.001 * i, "prompt_tokens": 16000, "output_tokens": 64}
            for i in range(8)]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    over.setdefault("cache", {"num_gpu_blocks": 20000})
    doc = scenario_doc(trace, **over)
    return simulate(scenario_from_dict(doc, base_dir=tmp_path))


def test_fp8_decodes_faster_over_long_contexts_and_fast_forward_stays_exact(tmp_path):
    bf16 = _long_decodes(tmp_path)
    fp8 = _long_decodes(tmp_path, cache={"num_gpu_blocks": 20000, "kv_cache_dtype": "fp8"})
    exact = _long_decodes(tmp_path, cache={"num_gpu_blocks": 20000, "kv_cache_dtype": "fp8"},
                          simulation={"exact_steps": True})  # fmt: skip
    assert fp8.summary["tpot_s"]["p50"] < bf16.summary["tpot_s"]["p50"]
    assert fp8.requests_csv() == exact.requests_csv() and fp8.summary == exact.summary


def test_max_model_len_drops_longer_requests(tmp_path, capsys):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 900, "output_tokens": 100},
            {"arrival_s": 0.1, "prompt_tokens": 900, "output_tokens": 101}]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, scheduler={"max_num_batched_tokens": 512, "max_num_seqs": 16,
                                         "max_model_len": 1000})  # fmt: skip
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert [r["status"] for r in res.requests] == [
        "done", "dropped: longer than max_model_len (1000 tokens)"]  # fmt: skip
    assert res.summary["drop_reasons"] == {"longer than max_model_len (1000 tokens)": 1}
    assert "1 dropped: 1 longer than max_model_len (1000 tokens)" in res.table()


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["scheduler.max_model_len=500000"],
         "scheduler.max_model_len: 500000 exceeds llama-3.1-8b's context of 131072 tokens"),
        (["scheduler.max_model_len=100000", "cache.num_gpu_blocks=1000"],
         "scheduler.max_model_len: 100000 tokens need 6250 KV blocks, more than a replica's 1000 "
         "(vLLM refuses to start too); lower max_model_len or give the KV cache more memory"),
        (["cache.kv_cache_dtype=fp4"],
         "cache.kv_cache_dtype: 'fp4' is not allowed: Input should be 'auto' or 'fp8'"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_by_validate_and_run(tmp_path, capsys, sets, expected):
    argv = [x for s in sets for x in ("--set", s)]
    for command in (["validate"], ["run", "--out", str(tmp_path / "o")]):
        assert main([command[0], str(QUICKSTART), *command[1:], *argv]) == 2
        assert capsys.readouterr().err == f"kvsim: error: {QUICKSTART}: {expected}\n"
    assert not (tmp_path / "o").exists()
    # 100,000 tokens fit in 6,250 blocks.
    assert main(["validate", str(QUICKSTART), "--set", "scheduler.max_model_len=100000",
                 "--set", "cache.num_gpu_blocks=6250"]) == 0  # fmt: skip
