"""Every grid point runs what it records: the kernel inputs built for a point (without running the
kernel) have exactly the point's recorded tokens, pairs, sequences and segments."""

from __future__ import annotations

import pytest
import torch

from kvsim.calibration.grids import grid
from kvsim.calibration.measure import attention_layout, calibrate, check_point, kv_split
from kvsim.simulator.catalog import get_model
from kvsim.simulator.errors import KvsimError

MODELS = ["llama-3.1-8b", "llama-3.1-70b", "mistral-7b", "qwen2.5-7b"]


def _realized(lay) -> dict:
    """The attention features the kernel inputs carry, counted from the index tensors alone.

    A query at absolute position p attends a segment (slot, length, pos) on
    ``clamp(p − pos + 1, 0, length)`` keys (causal masking by position)."""
    seg, n, q_pos, cu = lay["segments"], lay["n_segments"], lay["q_pos"], lay["cu_q"]
    seqs = n.shape[0]
    q_per_seq = torch.ones(seqs, dtype=torch.long) if cu is None else (cu[1:] - cu[:-1]).long()
    seq_of_q = torch.repeat_interleave(torch.arange(seqs), q_per_seq)
    used = torch.arange(seg.shape[1])[None, :] < n[:, None].long()  # [seqs, max_segs]
    lengths = seg[..., 1].long() * used
    # Segments of a sequence: non-empty, disjoint slots inside its KV (sorted by slot; the
    # unused padding sorts last).
    big = torch.iinfo(torch.long).max // 4
    start = torch.where(used, seg[..., 0].long(), big)
    order = torch.argsort(start, dim=1)
    start, length = start.gather(1, order), lengths.gather(1, order)
    both = used.gather(1, order)[:, 1:]
    assert bool((lengths[used] >= 1).all()) and bool((start[used.gather(1, order)] >= 0).all())
    assert bool(((start[:, 1:] >= start[:, :-1] + length[:, :-1]) | ~both).all())
    end = (start + length).masked_fill(~used.gather(1, order), 0).max(dim=1).values
    assert bool((end <= torch.tensor(lay["seq_lens"])).all())
    p = q_pos.long()[:, None]
    pos0 = seg[seq_of_q, :, 2].long()
    seen = (p - pos0 + 1).clamp(min=0)
    seen = torch.minimum(seen, seg[seq_of_q, :, 1].long()) * used[seq_of_q]
    return {
        "q_tokens": int(q_pos.shape[0]),
        "kv_tokens": int(lengths.sum()),
        "qk_pairs": int(seen.sum()),
        "seqs": seqs,
        "segments": int(n.sum()),
    }


@pytest.mark.parametrize("model, tp", [("llama-3.1-8b", 1), ("qwen2.5-7b", 8)])
def test_every_attention_point_runs_what_it_records(model, tp):
    """The points' token and segment counts do not depend on the model (its heads are tensor
    shapes); two models and TP degrees check that."""
    points = grid(get_model(model), tp, full=True)["attention"]
    for f in points:
        assert _realized(attention_layout(f)) == {
            k: f[k] for k in ("q_tokens", "kv_tokens", "qk_pairs", "seqs", "segments")
        }, f


def test_the_tiny_attention_points_run_what_they_record():
    for f in grid(get_model("llama-3.1-8b"), 1, full=False)["attention"]:
        assert _realized(attention_layout(f)) == {
            k: f[k] for k in ("q_tokens", "kv_tokens", "qk_pairs", "seqs", "segments")
        }, f


def test_llama_prefill_points_without_cache_are_one_segment():
    """The four prefill chunks with nothing cached were recorded as 8 segments and run as 1."""
    points = grid(get_model("llama-3.1-8b"), 1, full=True)["attention"]
    fresh = [(f["q_tokens"], f["segments"]) for f in points
             if f["seqs"] == 1 < f["q_tokens"] == f["kv_tokens"]]  # fmt: skip
    assert fresh == [(128, 1), (512, 1), (2048, 1), (8192, 1)]
    assert len(points) == 60


@pytest.mark.parametrize("model", MODELS)
def test_every_grid_point_passes_the_runners_check(model):
    """What calibrate checks before timing: no point of any catalog model's grid is refused."""
    for tp, full, max_head_dim in ((1, True, 128), (8, True, 128), (1, False, 32)):
        for op, pts in grid(get_model(model), tp, full=full).items():
            for f in pts:
                check_point(op, f, max_head_dim)


@pytest.mark.parametrize("model", MODELS)
def test_every_kv_dim_point_runs_its_kv_dim(model):
    """SCD and quantization points record kv_dim; the runner splits it into heads × head_dim."""
    for full, max_head_dim in ((True, 128), (False, 32)):
        for pts in grid(get_model(model), 1, full=full).values():
            for f in pts:
                if "kv_dim" in f:
                    kvh, d = kv_split(f["kv_dim"], max_head_dim)
                    assert 2 * kvh * d == f["kv_dim"] and d <= max_head_dim


@pytest.mark.parametrize(
    "f, why",
    [
        (
            {"q_tokens": 128, "kv_tokens": 128, "qk_pairs": 8256, "seqs": 1, "segments": 8},
            "0 cached tokens cannot fill 7 segments",
        ),
        (
            {"q_tokens": 4, "kv_tokens": 4096, "qk_pairs": 4096, "seqs": 4, "segments": 6},
            "a decode batch needs kv_tokens and segments divisible by seqs",
        ),
        (
            {"q_tokens": 4, "kv_tokens": 4096, "qk_pairs": 4000, "seqs": 4, "segments": 4},
            "qk_pairs = kv_tokens",
        ),
        (
            {"q_tokens": 8, "kv_tokens": 64, "qk_pairs": 100, "seqs": 2, "segments": 2},
            "a prefill chunk is one sequence",
        ),
        (
            {"q_tokens": 8, "kv_tokens": 64, "qk_pairs": 100, "seqs": 1, "segments": 1},
            "qk_pairs = q_tokens·cached",
        ),
    ],
)
def test_a_point_that_cannot_run_as_recorded_is_refused(f, why):
    with pytest.raises(KvsimError) as e:
        attention_layout(f)
    assert str(e.value).startswith(f"attention point {f}: ") and why in str(e.value)
    assert str(e.value).endswith("the kernel cannot run it as recorded")


def test_kv_split_refuses_a_kv_dim_it_cannot_run():
    assert kv_split(2048, 128) == (8, 128) and kv_split(2048, 32) == (32, 32)
    assert kv_split(192, 128) == (3, 32)
    with pytest.raises(KvsimError, match="kv_dim 200 is not 2 × kv_heads × a head dim"):
        kv_split(200, 128)


def test_calibrate_checks_every_point_before_timing(tmp_path, monkeypatch):
    """A grid with a point the kernels cannot run stops before any timing or file."""
    import kvsim.calibration.measure as measure

    bad = {"q_tokens": 16, "kv_tokens": 16, "qk_pairs": 136, "seqs": 1, "segments": 2,
           "heads": 4, "kv_heads": 2, "head_dim": 32}  # fmt: skip
    monkeypatch.setattr(measure, "grid", lambda *a: {"gemm": [], "attention": [bad]})
    monkeypatch.setattr(measure, "time_point", lambda *a: pytest.fail("timed a point"))
    with pytest.raises(KvsimError, match="0 cached tokens cannot fill 1 segments"):
        calibrate(get_model("llama-3.1-8b"), 1, tmp_path / "out", False, None)
    assert not (tmp_path / "out").exists()
