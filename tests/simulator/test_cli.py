"""The command line: the two README commands' behaviour, determinism, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, write_kvsim_trace

from kvsim.simulator.cli import main

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _small(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"]["requests"] = 200
    for dotted, value in changes.items():
        node = doc
        *head, last = dotted.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_run_writes_results_and_is_deterministic(tmp_path, capsys):
    s = _small(tmp_path)
    assert main(["run", str(s), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "TTFT (ms)" in out and "SLO attainment" in out
    assert main(["run", str(s), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    for name in (
        "summary.json",
        "requests.csv",
        "timeseries.csv",
        "scenario.resolved.yaml",
        "report.html",
    ):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
    report = (tmp_path / "a" / "report.html").read_text()
    assert "TTFT p50 / p90 / p99" in report and 'id="kvsim-ttft"' in report
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["finished"] == 200
    assert len((tmp_path / "a" / "requests.csv").read_text().splitlines()) == 201


def test_set_overrides_change_the_run(tmp_path, capsys):
    s = _small(tmp_path)
    args = ["run", str(s), "--no-progress", "--json", "--set", "cluster.replicas=1"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    args[-1] = "cluster.replicas=4"
    assert main(args + ["--out", str(tmp_path / "four")]) == 0
    four = json.loads(capsys.readouterr().out)
    assert one["gpus"] == 1 and four["gpus"] == 4
    assert four["ttft_s"]["p99"] < one["ttft_s"]["p99"]
    resolved = yaml.safe_load((tmp_path / "four" / "scenario.resolved.yaml").read_text())
    assert resolved["cluster"]["replicas"] == 4


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("kvsim: error: ")
    return err


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"cache.evicton": "lru"}, ["cache.evicton", "did you mean 'eviction'"]),
        ({"cluster.replicas": "many"}, ["cluster.replicas", "'many'", "integer"]),
        ({"workload.rate": -3}, ["workload.synthetic.rate", "-3", "greater than 0"]),
        ({"cache.eviction": "lur"}, ["eviction", "'lur'", "lru"]),
        ({"hardware": "h1000"}, ["hardware", "h100-sxm"]),
        ({"workload.prompt_tokens": {"type": "uniform", "low": 9, "high": 3}}, ["low (9)"]),
        ({"scheduler.max_num_seqs": 9000}, ["max_num_batched_tokens", "max_num_seqs"]),
    ],
)
def test_bad_scenario_is_one_line_and_writes_nothing(tmp_path, capsys, changes, expected):
    s = _small(tmp_path, **changes)
    err = _error(capsys, ["run", str(s), "--out", str(tmp_path / "out"), "--no-progress"])
    assert str(s) in err
    for fragment in expected:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_missing_trace_file(tmp_path, capsys):
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"] = {"type": "trace", "path": "nope.jsonl", "format": "mooncake"}
    s = tmp_path / "t.yaml"
    s.write_text(yaml.safe_dump(doc))
    err = _error(capsys, ["run", str(s), "--out", str(tmp_path / "out")])
    assert "workload.path" in err and "nope.jsonl" in err and "not found" in err
    assert not (tmp_path / "out").exists()


def test_malformed_trace_row_names_file_and_line(tmp_path, capsys):
    trace = tmp_path / "bad.jsonl"
    good = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n'
    bad = '{"timestamp": 5, "input_length": "lots", "output_length": 5, "hash_ids": [1]}\n'
    trace.write_text(good + good + bad)
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"] = {"type": "trace", "path": str(trace), "format": "mooncake"}
    s = tmp_path / "t.yaml"
    s.write_text(yaml.safe_dump(doc))
    err = _error(capsys, ["run", str(s), "--out", str(tmp_path / "out"), "--no-progress"])
    assert f"{trace}:3" in err and "input_length" in err and "'lots'" in err
    assert not (tmp_path / "out").exists()


def test_missing_scenario_and_bad_set(tmp_path, capsys):
    assert "not found" in _error(capsys, ["run", str(tmp_path / "none.yaml")])
    s = _small(tmp_path)
    err = _error(capsys, ["validate", str(s), "--set", "cluster.replicass=2"])
    assert "did you mean 'replicas'" in err


def test_validate_schema_and_trace_stats(tmp_path, capsys):
    assert main(["validate", str(QUICKSTART)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "workload" in schema["properties"]
    trace = write_kvsim_trace(
        tmp_path / "t.jsonl",
        [
            {
                "arrival_s": i,
                "prompt_tokens": 100,
                "output_tokens": 10,
                "blocks": [1, 2 + i],
                "unit_tokens": 64,
            }
            for i in range(4)
        ],
    )
    assert main(["trace", "stats", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "requests" in out and "37.5%" in out  # 3 of 8 units are prefix hits


def test_console_script_exit_code_without_traceback(tmp_path):
    s = _small(tmp_path, **{"cache.evicton": "lru"})
    p = subprocess.run(
        [sys.executable, "-m", "kvsim.simulator.cli", "run", str(s)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "did you mean 'eviction'" in p.stderr


def test_a_roofline_run_says_it_is_uncalibrated(tmp_path, capsys):
    s = _small(tmp_path)
    assert main(["run", str(s), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "latency model             roofline v2 (h100-sxm, uncalibrated)" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["latency_model"] == "roofline v2 (h100-sxm, uncalibrated)"
    assert summary["latency_calibrated"] is False


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["spc_quality", "spc_system_prompts"])
def test_the_sparse_prefix_caching_scenarios_run_small(tmp_path, capsys, name):
    """Cut down (a few groups), each measures after its warm-up, stores and reuses checkpoints,
    and the terminal says how many requests only warmed up."""
    out = tmp_path / "r"
    argv = ["run", str(ROOT / "scenarios" / f"{name}.yaml"), "--out", str(out), "--no-progress",
            "--set", "workload.groups=4", "--set", "workload.max_requests=60",
            "--set", "simulation.warmup_requests=30"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "30 measured after 30 warm-up requests" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["requests"] == 30 and s["checkpoints"]["stored"] > 0 and s["token_hit_ratio"] > 0.3
