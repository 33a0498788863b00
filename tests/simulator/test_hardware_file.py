"""--hardware-file: a user's GPUs added to the catalog, checked field by field as the catalog's
entries are (the same function), for run, validate, sweep and plan."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import yaml
from helpers import ROOT

from kvsim.simulator import catalog as catalog_module
from kvsim.simulator import load_scenario
from kvsim.simulator.catalog import get_gpu, read_hardware_file
from kvsim.simulator.cli import main
from kvsim.simulator.cluster import Cluster
from kvsim.simulator.errors import KvsimError

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
MINE = {
    "h100-94g": {"base": "h100-sxm", "memory_gib": 93.0, "source": "our nvidia-smi, 2026"},
    "edge-gpu": {
        "source": "vendor sheet", "memory_gib": 24, "sms": 60, "bf16_tflops": 120,
        "hbm_tbyte_per_s": 0.9, "nvlink_gbit_per_s": 0, "pcie_gbit_per_s": 256,
        "bandwidth_efficiency": 0.85, "gemm_efficiency": 0.7, "gemm_tile_exponent": 0.22,
        "gemm_tile_s": 1.4e-6, "gemm_launch_s": 4.7e-6, "attention_prefill_efficiency": 0.5,
        "attention_decode_efficiency": 0.9, "attention_decode_streams": 12.5,
        "allreduce_bus_gbyte_per_s": 20,
    },
}  # fmt: skip


def _file(tmp_path, doc, name="gpus.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_user_gpu_from_a_catalog_base_or_the_defaults(tmp_path):
    gpus = read_hardware_file(_file(tmp_path, MINE))
    h100 = get_gpu("h100-sxm")
    mine = gpus["h100-94g"]
    assert mine.memory_gib == 93.0 and mine.bf16_tflops == h100.bf16_tflops
    assert mine.source == "our nvidia-smi, 2026"
    edge = gpus["edge-gpu"]
    assert (edge.sms, edge.nvlink_gbit_per_s, edge.launch_s) == (60, 0.0, h100.launch_s)
    assert edge.nccl_ring_base_latency_us == h100.nccl_ring_base_latency_us  # the defaults'
    s = load_scenario(QUICKSTART, ["hardware=h100-94g"], hardware_files=(tmp_path / "gpus.yaml",))
    assert s.gpu() == mine and s.gpu_file() == str(tmp_path / "gpus.yaml")
    assert Cluster(s).capacity > Cluster(load_scenario(QUICKSTART)).capacity  # 93 GiB vs 79.19


def test_run_validate_sweep_and_plan_take_it(tmp_path, capsys):
    hw = _file(tmp_path, MINE)
    sets = ["--set", "hardware=h100-94g", "--set", "workload.requests=60"]
    out = tmp_path / "run"
    assert main(["run", str(QUICKSTART), *sets, "--hardware-file", str(hw), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hardware_file"] == str(hw)
    assert f"h100-94g (93 GiB, 989 bf16 TFLOP/s, 3.35 TB/s; from {hw})" in (
        out / "report.html").read_text()  # fmt: skip
    assert main(["validate", str(QUICKSTART), *sets, "--hardware-file", str(hw)]) == 0
    err = "not in the GPU catalog or a --hardware-file"
    assert main(["validate", str(QUICKSTART), *sets]) == 2 and err in capsys.readouterr().err
    base = tmp_path / "base.yaml"
    base.write_text(QUICKSTART.read_text().replace("name: quickstart", "name: hw"))
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: base.yaml\nset: {workload.requests: 40}\n"
                     "grid: {hardware: [h100-sxm, h100-94g]}\n")  # fmt: skip
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "sw"), "--no-progress",
                 "--hardware-file", str(hw), "--workers", "2"]) == 0  # fmt: skip
    rows = (tmp_path / "sw" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and ",h100-94g," in rows[2]
    assert main(["plan", str(QUICKSTART), *sets, "--hardware-file", str(hw), "--out",
                 str(tmp_path / "plan"), "--no-progress", "--workers", "1"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"g": {"base": "h100-sxm", "memory_gb": 90, "source": "x"}},
         "'g': unknown field 'memory_gb'; did you mean 'memory_gib'?"),
        ({"g": {"memory_gib": 24, "source": "x"}},
         "'g': lacks allreduce_bus_gbyte_per_s, attention_decode_efficiency, "
         "attention_decode_streams, attention_prefill_efficiency, bandwidth_efficiency, "
         "bf16_tflops, gemm_efficiency, gemm_launch_s, gemm_tile_exponent, gemm_tile_s, "
         "hbm_tbyte_per_s, nvlink_gbit_per_s, pcie_gbit_per_s, sms"),
        ({"g": {"base": "h100-sxm", "gemm_efficiency": 1.5, "source": "x"}},
         "'g': gemm_efficiency: 1.5 is not allowed: a number in (0, 1]"),
        ({"g": {"base": "h100-sxm", "memory_gib": ".nan", "source": "x"}},
         "'g': memory_gib: nan is not allowed: a number in (0, 100000]"),
        ({"g": {"base": "h100-sxm", "sms": 13.5, "source": "x"}},
         "'g': sms: 13.5 is not allowed: an integer in [1, 100000]"),
        ({"g": {"base": "h100-sxm", "nccl_ring_hop_latency_us": [1, 2], "source": "x"}},
         "'g': nccl_ring_hop_latency_us: [1, 2] is not allowed: three numbers (NCCL's LL, "
         "LL128, Simple protocols), microseconds"),
        ({"g": {"base": "h100-sxm"}},
         "'g': source: where the figures come from (a URL, a measurement), as text"),
        ({"g": {"base": "b200", "source": "x"}},
         "'g': base: 'b200' is not allowed; allowed: a catalog GPU (h100-sxm, h200, a100-80g, "
         "h20)"),
        ({"H100-SXM": {"base": "h100-sxm", "source": "x"}},
         "'H100-SXM': the catalog has a GPU of that name; give yours another (and base: "
         "h100-sxm to start from its figures)"),
        ({"g": [1, 2]}, "'g': an entry is a mapping of the catalog's fields"),
        ({"bad name!": {}}, "'bad name!': a GPU name is letters, digits and ._+- (at most 64)"),
        ({}, "a hardware file names at least one GPU"),
    ],
)  # fmt: skip
def test_bad_hardware_files_are_one_line(tmp_path, capsys, doc, expected):
    path = tmp_path / "gpus.yaml"
    text = yaml.safe_dump(doc).replace("'.nan'", ".nan")
    path.write_text(text)
    with pytest.raises(KvsimError) as e:
        read_hardware_file(path)
    assert str(e.value) == f"{path}: {expected}"
    assert main(["validate", str(QUICKSTART), "--hardware-file", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_catalog_goes_through_the_same_checks(monkeypatch):
    entry = dict(catalog_module.gpu_catalog()["h20"], attention_decode_efficiency=0.0)
    monkeypatch.setattr(catalog_module, "gpu_catalog", lambda: {"h20": entry})
    with pytest.raises(KvsimError) as e:
        get_gpu("h20")
    assert str(e.value) == (
        "hardware catalog entry 'h20': attention_decode_efficiency: 0.0 is not allowed: a number "
        "in (0, 1]"
    )


def test_a_gpu_in_two_files_and_a_missing_file(tmp_path, capsys):
    a = _file(tmp_path, {"g": MINE["h100-94g"]}, "a.yaml")
    b = _file(tmp_path, {"g": MINE["h100-94g"]}, "b.yaml")
    argv = ["validate", str(QUICKSTART), "--hardware-file", str(a), "--hardware-file", str(b)]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err == f"kvsim: error: {b}: 'g': also in {a}; GPU names must differ\n"
    )
    assert main(["validate", str(QUICKSTART), "--hardware-file", str(tmp_path / "no.yaml")]) == 2
    assert "no.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["models.yaml", "hardware.yaml"])
def test_the_catalogs_read_the_same_with_libyaml_and_pure_python(name):
    text = resources.files(catalog_module).joinpath(name).read_text(encoding="utf-8")
    if yaml.__with_libyaml__:  # PyYAML's wheels carry it
        assert catalog_module._LOADER is yaml.CSafeLoader
    got, want = catalog_module._load(name), yaml.load(text, Loader=yaml.SafeLoader)
    # Key order too: it orders the "allowed: ..." lists of error messages.
    assert got == want and json.dumps(got) == json.dumps(want)
