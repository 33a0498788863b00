"""Loading a profile: held-out errors above the limits are refused unless the profile records
their acceptance, and a badly structured profile is one line naming the field, never a
traceback."""

from __future__ import annotations

import copy

import pytest
import yaml

from kvsim.simulator.catalog import get_gpu
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency import RooflineModel
from kvsim.simulator.latency.ops import Gemm
from kvsim.simulator.latency.profile import load_profile

FORM = "launch_s + max(s_per_flop * flops, s_per_byte * bytes) + sum(extra * feature)"
GOOD = {
    "kvsim_profile": 1,
    "device": {"device": "hand-written", "timer": "cuda_events"},
    "grid": {"model": "llama-3.1-8b", "tensor_parallel": 1},
    "ops": {
        "gemm": {
            "form": FORM,
            "params": {
                "launch_s": 5e-6,
                "s_per_flop": 1.5e-15,
                "s_per_byte": 3.5e-13,
                "extra": {},
            },  # fmt: skip
            "ranges": {"tokens": [1, 16384]},
            "points": 125,
            "heldout_mape": 0.03,
            "heldout_max_error": 0.09,
        },
        "attention": {
            "params": {
                "launch_s": 8e-6,
                "s_per_flop": 2.5e-15,
                "s_per_byte": 4e-13,
                "extra": {"segments": 1e-7, "seqs": 2e-8},
            },  # fmt: skip
            "ranges": {},
            "heldout_mape": 0.58,
            "heldout_max_error": 1.4,
        },
    },
    "not_measured": {"step_overhead": "host", "allreduce": "several GPUs"},
    "quality": {"max_heldout_mape": 0.1, "max_heldout_error": 0.25, "accepted": ["attention"]},
}


def _load(tmp_path, doc):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return load_profile(path, RooflineModel(get_gpu("h100-sxm")), False, ["gemm", "attention"])


def test_a_good_profile_loads(tmp_path):
    m = _load(tmp_path, GOOD)
    assert m.accepted == ["attention"]
    assert m.price(Gemm(2, 16, 4096, 4096)) == pytest.approx(
        5e-6 + max(1.5e-15 * 2 * 16 * 4096 * 4096, 3.5e-13 * 2 * (16 * 4096 * 2 + 4096 * 4096))
    )


def test_an_op_above_the_limits_is_refused_unless_accepted(tmp_path):
    """The issue's case: an op with a 58% held-out error, which the loader used to take."""
    doc = copy.deepcopy(GOOD)
    doc["quality"]["accepted"] = []
    with pytest.raises(KvsimError) as e:
        _load(tmp_path, doc)
    assert str(e.value) == (
        f"{tmp_path}/p.yaml: ops.attention: held-out MAPE 58.0% exceeds 10.0% and worst held-out "
        "error 140.0% exceeds 25.0%; refit it, or accept it explicitly (kvsim fit --accept-error "
        "lists it under quality.accepted)"
    )
    del doc["quality"]  # no quality section: the default limits (10%, 25%)
    with pytest.raises(KvsimError, match="ops.attention: held-out MAPE 58.0% exceeds 10.0%"):
        _load(tmp_path, doc)
    doc["ops"]["attention"]["heldout_mape"] = 0.08  # the worst error alone is enough
    with pytest.raises(KvsimError, match="attention: worst held-out error 140.0% exceeds 25.0%;"):
        _load(tmp_path, doc)
    doc["ops"]["attention"]["heldout_max_error"] = 0.25  # at the limit is within it
    assert _load(tmp_path, doc).accepted == []
    doc["quality"] = {"max_heldout_mape": 0.05}  # a stricter limit recorded by the fit
    with pytest.raises(KvsimError, match="attention: held-out MAPE 8.0% exceeds 5.0%;"):
        _load(tmp_path, doc)


def _set(doc, path, value):
    *parents, last = path
    for k in parents:
        doc = doc[k]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


DELETE = object()
CASES = [
    (("kvsim_profile",), 2, "not a kvsim profile of version 1 (kvsim_profile: 2)"),
    (("qualty",), {}, "unknown key 'qualty'; allowed: kvsim_profile, device, grid, ops, "
     "not_measured, quality"),
    (("device",), "H100", "device is 'H100'; allowed: a mapping"),
    (("grid",), [1], "grid is [1]; allowed: a mapping"),
    (("ops",), ["gemm"], "ops is ['gemm']; allowed: a mapping"),
    (("ops", "gemmm"), {}, "ops: unknown op 'gemmm'; allowed: allreduce, attention, copy, "
     "elementwise, gemm"),
    (("ops", "gemm"), None, "ops.gemm is None; allowed: a mapping"),
    (("ops", "gemm", "paramz"), {}, "ops.gemm: unknown key 'paramz'; allowed: form, params, "
     "ranges, points, heldout_mape, heldout_max_error"),
    (("ops", "gemm", "heldout_mape"), DELETE, "ops.gemm: lacks 'heldout_mape' (needs params, "
     "ranges, heldout_mape, heldout_max_error)"),
    (("ops", "gemm", "heldout_max_error"), ".nan", "ops.gemm.heldout_max_error is '.nan'; "
     "allowed: a finite number ≥ 0"),
    (("ops", "gemm", "heldout_mape"), -0.1, "ops.gemm.heldout_mape is -0.1; allowed: a finite "
     "number ≥ 0"),
    (("ops", "gemm", "form"), "t = a", "ops.gemm.form is 't = a'; allowed: 'launch_s + max("),
    (("ops", "gemm", "points"), 0, "ops.gemm.points is 0; allowed: an integer ≥ 1"),
    (("ops", "gemm", "params"), 5, "ops.gemm.params is 5; allowed: a mapping"),
    (("ops", "gemm", "params", "launch_s"), DELETE, "ops.gemm.params: lacks 'launch_s' (needs "
     "launch_s, s_per_flop, s_per_byte)"),
    (("ops", "gemm", "params", "launch_s"), float("nan"), "ops.gemm.params.launch_s is nan; "
     "allowed: a finite number ≥ 0"),
    (("ops", "gemm", "params", "s_per_flop"), float("inf"), "ops.gemm.params.s_per_flop is inf; "
     "allowed: a finite number ≥ 0"),
    (("ops", "gemm", "params", "s_per_byte"), -1e-13, "ops.gemm.params.s_per_byte is -1e-13; "
     "allowed: a finite number ≥ 0"),
    (("ops", "gemm", "params", "s_per_byte"), True, "ops.gemm.params.s_per_byte is True; "
     "allowed: a finite number ≥ 0"),
    (("ops", "gemm", "params", "launch_s"), "fast", "ops.gemm.params.launch_s is 'fast'; "
     "allowed: a finite number ≥ 0"),
    (("ops", "gemm", "params", "extra"), {"segments": 1e-7}, "ops.gemm.params.extra: unknown key "
     "'segments'; allowed: in_dim, out_dim, tokens"),
    (("ops", "attention", "params", "extra"), [1e-7], "ops.attention.params.extra is [1e-07]; "
     "allowed: a mapping"),
    (("ops", "gemm", "ranges"), DELETE, "ops.gemm: lacks 'ranges'"),
    (("ops", "gemm", "ranges", "tokenz"), [1, 2], "ops.gemm.ranges: unknown key 'tokenz'; "
     "allowed: in_dim, out_dim, tokens"),
    (("ops", "gemm", "ranges", "tokens"), [1], "ops.gemm.ranges.tokens is [1]; allowed: "
     "[low, high]"),
    (("ops", "gemm", "ranges", "tokens"), [9, 1], "ops.gemm.ranges.tokens is [9, 1]; allowed: "
     "[low, high] with low ≤ high"),
    (("ops", "gemm", "ranges", "tokens"), [1, None], "ops.gemm.ranges.tokens is None; allowed: "
     "a finite number ≥ 0"),
    (("not_measured", "gemm"), "x", "not_measured: unknown key 'gemm'; allowed: step_overhead, "
     "allreduce"),
    (("quality",), "strict", "quality is 'strict'; allowed: a mapping"),
    (("quality", "max_heldout_mape"), 10, "quality.max_heldout_mape is 10; allowed: a fraction "
     "in (0, 1]"),
    (("quality", "max_heldout_error"), 0, "quality.max_heldout_error is 0; allowed: a fraction "
     "in (0, 1]"),
    (("quality", "accepted"), "attention", "quality.accepted is 'attention'; allowed: a list of "
     "the profile's ops (attention, gemm)"),
    (("quality", "accepted"), ["atention"], "quality.accepted is ['atention']; allowed: a list of "
     "the profile's ops (attention, gemm)"),
]  # fmt: skip


@pytest.mark.parametrize("path, value, message", CASES, ids=[".".join(c[0]) for c in CASES])
def test_bad_structure_is_one_line(tmp_path, path, value, message):
    doc = copy.deepcopy(GOOD)
    _set(doc, path, value)
    with pytest.raises(KvsimError) as e:
        _load(tmp_path, doc)
    assert str(e.value).startswith(f"{tmp_path}/p.yaml: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_numbers_written_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 5e-6 (no dot) as a string; a hand-written profile means a number."""
    text = yaml.safe_dump(GOOD).replace("launch_s: 5.0e-06", "launch_s: 5e-6")
    assert "launch_s: 5e-6" in text
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    m = load_profile(tmp_path / "p.yaml", RooflineModel(get_gpu("h100-sxm")), False, ["gemm"])
    assert m.fits["gemm"].launch == 5e-6
