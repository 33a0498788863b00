"""The whole calibration pipeline on a tiny grid under Triton's interpreter, and the simulator
driven by a profile: iteration times equal the fitted functions."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import yaml
from helpers import scenario_doc, write_kvsim_trace

from kvsim.calibration.fit import fit_file
from kvsim.calibration.grids import grid
from kvsim.calibration.measure import calibrate
from kvsim.calibration.measurements import read_measurements
from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.catalog import get_gpu, get_model
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency.profile import load_profile


def test_tiny_pipeline_measures_fits_and_loads(tmp_path):
    """The interpreter's timings are meaningless, so the tiny profile's held-out errors may be
    anything: the test accepts them explicitly (accept_error=True), as a user would with
    ``kvsim calibrate --tiny --accept-error``."""
    model = get_model("llama-3.1-8b")
    profile = calibrate(
        model, 1, tmp_path, full=False, ops=None, log=lambda *a: None, accept_error=True
    )
    points = grid(model, 1, full=False)
    rows, run = read_measurements(tmp_path / "measurements.csv")
    assert [(r.op, r.features) for r in rows] == [(k, f) for k, v in points.items() for f in v]
    assert all(r.seconds > 0 for r in rows)
    assert run["device"].endswith("triton interpreter") and run["torch"] and run["date"]
    assert (run["model"], run["tensor_parallel"], run["grid"], run["timer"]) == (
        "llama-3.1-8b",
        1,
        "tiny",
        "interpreter",
    )
    assert set(profile["ops"]) == set(points)
    for entry in profile["ops"].values():
        assert entry["heldout_mape"] >= 0 and entry["points"] >= 4
        assert min(entry["params"]["launch_s"], entry["params"]["s_per_byte"]) >= 0
    assert profile["grid"] == {"model": "llama-3.1-8b", "tensor_parallel": 1, "full": False,
                               "points": {k: len(v) for k, v in points.items()},
                               "measurements": "measurements.csv"}  # fmt: skip
    # kvsim fit of the run's CSV writes the same profile (run record included).
    refit = fit_file(tmp_path / "measurements.csv", tmp_path / "refit.yaml", accept_error=True)
    assert refit == profile == yaml.safe_load((tmp_path / "profile.yaml").read_text())
    from kvsim.simulator.latency import RooflineModel

    m = load_profile(
        tmp_path / "profile.yaml",
        RooflineModel(get_gpu("h100-sxm")),
        False,
        ["gemm", "attention", "step_overhead"],
    )
    assert m.fallback_ops == ["step_overhead"]
    assert m.accepted == profile["quality"]["accepted"]


def _profile(tmp_path, ops=("gemm", "attention", "elementwise"), ranges=None):
    params = {
        "gemm": {"launch_s": 5e-6, "s_per_flop": 1.5e-15, "s_per_byte": 3.5e-13, "extra": {}},
        "elementwise": {"launch_s": 3e-6, "s_per_flop": 0.0, "s_per_byte": 4.5e-13, "extra": {}},
        "attention": {
            "launch_s": 8e-6,
            "s_per_flop": 2.5e-15,
            "s_per_byte": 4e-13,
            "extra": {"segments": 1e-7, "seqs": 2e-8},
        },
    }
    doc = {
        "kvsim_profile": 1,
        "device": {"device": "hand-written test profile"},
        "ops": {
            k: {
                "params": params[k],
                "ranges": (ranges or {}).get(k, {}),
                "heldout_mape": 0.02,
                "heldout_max_error": 0.05,
            }
            for k in ops
        },
        "not_measured": {"step_overhead": "host", "allreduce": "several GPUs"},
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, params


def test_iteration_times_equal_the_fitted_functions(tmp_path):
    path, p = _profile(tmp_path)
    rows = [{"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 2}]
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, latency={"type": "profile", "path": str(path)})
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    r = res.requests[0]
    # By hand: Llama-3.1-8B, TP1, H100 step overhead from the catalog (not measured).
    L, H, HEADS, KVH, D, INTER, VOCAB = 32, 4096, 32, 8, 128, 14336, 128256
    g = get_gpu("h100-sxm")

    def fitted(kind, flops, nbytes, **extra):
        q = p[kind]
        t = max(q["s_per_flop"] * flops, q["s_per_byte"] * nbytes) + q["launch_s"]
        return t + sum(q["extra"][k] * v for k, v in extra.items())

    def gemm(t, i, o):
        return fitted("gemm", 2 * t * i * o, 2 * (t * i + i * o + t * o))

    def elementwise(t, width, tensors, dtype_bytes=2):
        return fitted("elementwise", 4 * t * width, dtype_bytes * t * width * tensors)

    def iteration(ctx, q):
        dense = gemm(q, H, (HEADS + 2 * KVH) * D) + gemm(q, HEADS * D, H) + \
            gemm(q, H, 2 * INTER) + gemm(q, INTER, H)  # fmt: skip
        # rotary on q and k, SiLU·mul, and a residual add + RMSNorm per component + the final one
        dense += elementwise(q, (HEADS + KVH) * D, 2) + elementwise(q, INTER, 3)
        norms = (2 * L + 1) * elementwise(q, H, 4)
        pairs = q * ctx + q * (q + 1) // 2
        attn = fitted(
            "attention",
            4 * HEADS * D * pairs,
            2 * (2 * (ctx + q) * KVH * D + 2 * q * HEADS * D),
            segments=1,
            seqs=1,
        )
        s = L * dense + norms + L * attn + gemm(1, H, VOCAB)
        s += elementwise(1, VOCAB, 5, dtype_bytes=4)  # fp32 sampling over the vocabulary
        s += g.step_overhead_s + g.step_overhead_per_seq_s
        return round(s * 1e9)

    t1 = iteration(0, 100)
    t2 = t1 + iteration(100, 1)
    assert round(float(r["first_token_s"]) * 1e9) == t1
    assert round(float(r["finish_s"]) * 1e9) == t2
    assert res.summary["latency_model"] == f"profile {path} (hand-written test profile, undated)"
    assert res.summary["latency_calibrated"] is True
    assert res.summary["latency_fallback_ops"] == ["step_overhead"]


def test_profile_fast_forward_equals_exact_steps(tmp_path):
    """Decode runs under a profile (affine attention terms with extra segment/sequence costs)
    give the same per-request times with and without fast-forward; long outputs make long runs
    that are priced in closed form and cut by arrivals."""
    path, _ = _profile(tmp_path)
    rng = random.Random(3)
    rows = [
        {
            "arrival_s": i * 0.05,
            "prompt_tokens": rng.randint(20, 900),
            "output_tokens": rng.randint(1, 400),
        }
        for i in range(40)
    ]
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    out = []
    for exact in (False, True):
        doc = scenario_doc(
            trace,
            latency={"type": "profile", "path": str(path)},
            simulation={"exact_steps": exact},
        )
        out.append(simulate(scenario_from_dict(doc, base_dir=tmp_path)))
    assert out[0].requests_csv() == out[1].requests_csv()
    assert out[0].summary["iterations"] == out[1].summary["iterations"] > 400


def test_missing_op_is_an_error_unless_fallback(tmp_path):
    path, _ = _profile(tmp_path, ops=("gemm", "elementwise"))
    trace = write_kvsim_trace(
        tmp_path / "t.jsonl", [{"arrival_s": 0.0, "prompt_tokens": 10, "output_tokens": 2}]
    )
    doc = scenario_doc(trace, latency={"type": "profile", "path": str(path)})
    with pytest.raises(KvsimError, match="lacks op 'attention'.*fallback: roofline"):
        simulate(scenario_from_dict(doc, base_dir=tmp_path))
    doc["latency"]["fallback"] = "roofline"
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert res.summary["latency_fallback_ops"] == ["attention", "step_overhead"]


def test_extrapolation_is_flagged(tmp_path):
    path, _ = _profile(tmp_path, ranges={"gemm": {"tokens": [1, 64]}})
    trace = write_kvsim_trace(
        tmp_path / "t.jsonl", [{"arrival_s": 0.0, "prompt_tokens": 300, "output_tokens": 3}]
    )
    doc = scenario_doc(trace, latency={"type": "profile", "path": str(path)})
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert res.summary["latency_extrapolated"].get("gemm", 0) > 0


def _cli(*args, interpret: bool):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "kvsim.simulator.cli", *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_cli_dry_run(tmp_path):
    p = _cli("calibrate", "--dry-run", interpret=False)
    assert p.returncode == 0 and "gemm" in p.stdout and "expected about" in p.stdout
    p = _cli("calibrate", "--ops", "gemmm", "--dry-run", interpret=False)
    assert p.returncode == 2 and "unknown op 'gemmm'" in p.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_cli_without_a_gpu_says_so(tmp_path):
    p = _cli("calibrate", "--out", str(tmp_path / "x"), interpret=False)
    assert p.returncode == 2 and "needs a CUDA GPU" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()


def test_cli_calibrate_keeps_measurements_of_a_refused_fit(tmp_path):
    """A fit above the limits (here a limit no wall-clock timing meets) writes no profile but
    keeps measurements.csv; --accept-error writes the profile and records the acceptance."""
    out = tmp_path / "p"
    args = ("calibrate", "--tiny", "--ops", "gemm,copy", "--out", str(out), "--max-mape", "1e-9")
    p = _cli(*args, interpret=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"kvsim: error: {out}/measurements.csv: op 'copy': held-out MAPE ")
    assert f"{out}/profile.yaml not written" in p.stderr and p.stderr.count("\n") == 1
    assert (out / "measurements.csv").is_file() and not (out / "profile.yaml").exists()
    p = _cli(*args, "--accept-error", interpret=True)
    assert p.returncode == 0, p.stderr
    quality = yaml.safe_load((out / "profile.yaml").read_text())["quality"]
    assert quality == {"max_heldout_mape": 1e-9, "max_heldout_error": 0.25,
                       "accepted": ["copy", "gemm"]}  # fmt: skip
