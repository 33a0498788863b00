"""The fitter recovers known parameters from noisy synthetic measurements."""

from __future__ import annotations

import pytest

from kvsim.calibration.fit import (
    Measurement,
    build_profile,
    fit_file,
    fit_op,
    read_measurements,
    write_measurements,
)
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency.ops import OP_KINDS
from kvsim.simulator.latency.profile import predict

TRUE = {
    "gemm": {"launch_s": 6e-6, "s_per_flop": 1 / 650e12, "s_per_byte": 1 / 2.9e12, "extra": {}},
    "attention": {
        "launch_s": 9e-6,
        "s_per_flop": 1 / 400e12,
        "s_per_byte": 1 / 2.6e12,
        "extra": {"segments": 2e-7, "seqs": 5e-8},
    },
}


def _synthetic(kind, points, rng, noise=0.02):
    rows = []
    for f in points:
        op = OP_KINDS[kind](**f)
        extras = {k: f[k] for k in TRUE[kind]["extra"]}
        t = float(predict(TRUE[kind], op.flops(), op.bytes(), extras))
        rows.append(Measurement(kind, f, t * (1 + noise * rng.standard_normal())))
    return rows


def _gemm_points():
    return [
        {"tokens": t, "in_dim": i, "out_dim": o}
        for t in (1, 4, 16, 64, 256, 1024, 4096, 8192)
        for i, o in ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096))
    ]


def _attention_points():
    pts = []
    for b in (1, 4, 16, 64, 256):
        for c in (512, 2048, 8192, 32768):
            for s in (1, 4):
                pts.append(
                    {
                        "q_tokens": b,
                        "kv_tokens": b * c,
                        "qk_pairs": b * c,
                        "seqs": b,
                        "segments": b * s,
                        "heads": 32,
                        "kv_heads": 8,
                        "head_dim": 128,
                    }
                )
    for q in (128, 512, 2048, 8192):
        for c in (0, 4096, 16384):
            for s in (1, 8):
                pts.append(
                    {
                        "q_tokens": q,
                        "kv_tokens": c + q,
                        "qk_pairs": q * c + q * (q + 1) // 2,
                        "seqs": 1,
                        "segments": s,
                        "heads": 32,
                        "kv_heads": 8,
                        "head_dim": 128,
                    }
                )
    return pts


@pytest.mark.parametrize("kind, points", [("gemm", _gemm_points), ("attention", _attention_points)])
def test_recovers_known_parameters(rng, kind, points):
    rows = _synthetic(kind, points(), rng)
    res = fit_op(kind, rows)
    true = TRUE[kind]
    for name in ("s_per_flop", "s_per_byte"):
        assert res.params[name] == pytest.approx(true[name], rel=0.1), name
    assert res.params["launch_s"] == pytest.approx(true["launch_s"], rel=0.35)
    assert res.heldout_mape < 0.04  # noise is 2%: a right model generalizes to about that
    assert res.heldout_max_error < 0.15
    assert min([res.params["launch_s"], *res.params["extra"].values()]) >= 0


def test_few_points_near_collinear_are_fitted_exactly():
    """Six 4096×4096 GEMMs: the memory-bound ones read the same weights (bytes almost constant,
    like the launch), so a start from a sum of the terms settles with s_per_byte = 0 and a 15%
    held-out error; the roofline-split starts find the exact parameters."""
    rows = []
    for t in (1, 8, 64, 512, 4096, 16384):
        f = {"tokens": t, "in_dim": 4096, "out_dim": 4096}
        op = OP_KINDS["gemm"](**f)
        rows.append(
            Measurement("gemm", f, float(predict(TRUE["gemm"], op.flops(), op.bytes(), {})))
        )
    res = fit_op("gemm", rows)
    for name in ("launch_s", "s_per_flop", "s_per_byte"):
        assert res.params[name] == pytest.approx(TRUE["gemm"][name], rel=1e-9), name
    assert res.heldout_max_error < 1e-12


def test_wrong_model_shows_in_heldout_error(rng):
    """Points whose cost has a term the form lacks cannot be fitted well: the error says so."""
    rows = _synthetic("gemm", _gemm_points(), rng, noise=0.0)
    for r in rows:  # a step at a tile boundary the form cannot express
        if r.features["tokens"] >= 1024:
            r.seconds *= 1.8
    assert fit_op("gemm", rows).heldout_max_error > 0.15


def test_measurements_round_trip_and_refit(tmp_path, rng):
    rows = _synthetic("gemm", _gemm_points(), rng)
    meta = {
        "device": "test",
        "driver": "0",
        "cuda": "0",
        "torch": "0",
        "triton": "0",
        "date": "2026-11-23",
    }
    write_measurements(tmp_path / "m.csv", rows, meta)
    back, meta2 = read_measurements(tmp_path / "m.csv")
    assert meta2 == meta and len(back) == len(rows)
    assert [r.seconds for r in back] == [r.seconds for r in rows]
    profile = fit_file(tmp_path / "m.csv", tmp_path / "p.yaml")
    assert profile == build_profile(back, meta, {"measurements": "m.csv"})
    assert set(profile["not_measured"]) == {"step_overhead", "allreduce"}
    assert profile["ops"]["gemm"]["ranges"]["tokens"] == [1.0, 8192.0]


def test_bad_measurements(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(
        'op,seconds,features,device,driver,cuda,torch,triton,date\ngemmm,1e-3,"{}",d,,,,,\n'
    )
    with pytest.raises(KvsimError, match=r"m.csv:2: field 'op' is 'gemmm'"):
        read_measurements(p)
    with pytest.raises(KvsimError, match="too few to fit"):
        fit_op("gemm", [Measurement("gemm", {"tokens": 1, "in_dim": 2, "out_dim": 2}, 1e-5)] * 3)
