"""kvsim sweep: grid expansion, points equal to `kvsim run --set`, resume, refusals, bad files,
Pareto fronts, a deterministic table, and the local pool against a real local Ray cluster."""

from __future__ import annotations

import csv
import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from kvsim.simulator.cli import main
from kvsim.simulator.output import FILES
from kvsim.simulator.sweep import load_sweep, pareto_front, staircase

BASE = {
    "name": "tiny",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "cluster": {"replicas": 1},
    "routing": "least_loaded",
    "workload": {
        "type": "synthetic",
        "requests": 40,
        "rate": 20.0,
        "prompt_tokens": {"type": "lognormal", "median": 600, "sigma": 0.5, "min": 16, "max": 4000},
        "output_tokens": {"type": "lognormal", "median": 40, "sigma": 0.5, "min": 1, "max": 200},
        "shared_prefix": {"prefixes": 2, "tokens": 512},
        "unit_tokens": 64,
    },
}
# Four points: a product of two paths (one a mapping), then a second product whose mapping has
# another sub-key and which leaves cluster.replicas alone.
UNION = """\
base: base.yaml
set: {seed: 3}
grid:
  - {scheduler.chunking: [{type: fixed}], cluster.replicas: [1, 2]}
  - {scheduler.chunking: [{type: adaptive, target_s: 0.02}, {type: adaptive, target_s: 0.1}]}
plots:
  - {x: cluster.replicas, y: ttft_s.p99}
  - {x: ttft_s.p99, y: throughput.requests_per_s, series: scheduler.chunking.type,
     kind: pareto, maximize_y: true}
"""
RUN_FILES = FILES  # what `kvsim run` writes
OUT_FILES = ("results.csv", "results.parquet", "report.html")


def _write(folder: Path, sweep_text: str, name: str = "s.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    path = folder / name
    path.write_text(sweep_text)
    return path


def _sweep(capsys, path: Path, out: Path, *extra: str) -> str:
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", *extra]) == 0
    return capsys.readouterr().out


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("kvsim: error: ")
    return err


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _folders(out: Path) -> list[str]:
    return [r["folder"] for r in _rows(out)]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The four-point union sweep, run once by the local pool (two workers)."""
    folder = tmp_path_factory.mktemp("sweep")
    path = _write(folder, UNION)
    out = folder / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress", "--workers", "2"]) == 0
    return path, out


# ---------------------------------------------------------------- expansion


def test_grid_is_a_product_in_nested_loop_order(tmp_path):
    path = _write(
        tmp_path,
        "base: base.yaml\nset: {seed: 1, workload.rate: 5.0}\n"
        "grid: {cluster.replicas: [1, 2, 4], cache.eviction: [lru, lfu]}\n",
    )
    sweep = load_sweep(path)
    assert sweep.name == "s" and sweep.base == tmp_path / "base.yaml" and sweep.plots is None
    assert [p.index for p in sweep.points] == list(range(6))
    fixed = ("seed=1", "workload.rate=5.0")
    assert [p.overrides for p in sweep.points] == [
        (*fixed, "cluster.replicas=1", "cache.eviction=lru"),
        (*fixed, "cluster.replicas=1", "cache.eviction=lfu"),
        (*fixed, "cluster.replicas=2", "cache.eviction=lru"),
        (*fixed, "cluster.replicas=2", "cache.eviction=lfu"),
        (*fixed, "cluster.replicas=4", "cache.eviction=lru"),
        (*fixed, "cluster.replicas=4", "cache.eviction=lfu"),
    ]
    assert sweep.points[3].values[-2:] == (("cluster.replicas", 2), ("cache.eviction", "lfu"))
    folders = [p.folder for p in sweep.points]
    assert all(
        f.startswith(f"points/{i}-") and len(f) == len(f"points/{i}-") + 8
        for i, f in enumerate(folders)
    )
    assert len(set(folders)) == 6 and folders == [p.folder for p in load_sweep(path).points]


def test_a_list_of_grids_is_the_union_of_their_products_in_order(tmp_path):
    sweep = load_sweep(_write(tmp_path, UNION))
    assert [p.overrides for p in sweep.points] == [
        ("seed=3", "scheduler.chunking={type: fixed}", "cluster.replicas=1"),
        ("seed=3", "scheduler.chunking={type: fixed}", "cluster.replicas=2"),
        ("seed=3", "scheduler.chunking={type: adaptive, target_s: 0.02}"),
        ("seed=3", "scheduler.chunking={type: adaptive, target_s: 0.1}"),
    ]
    assert [(p.x, p.y, p.series, p.kind, p.maximize_y) for p in sweep.plots] == [
        ("cluster.replicas", "ttft_s.p99", None, "curve", False),
        ("ttft_s.p99", "throughput.requests_per_s", "scheduler.chunking.type", "pareto", True),
    ]


def test_values_reach_the_scenario_as_written(tmp_path):
    """Each value goes through its --set text and back unchanged, whatever YAML would make of
    its plain spelling."""
    path = _write(
        tmp_path,
        "base: base.yaml\ngrid:\n  description: ['1e3', 'yes', 'a: b', '', '#x', '07']\n",
    )
    sweep = load_sweep(path)
    from kvsim.simulator import load_scenario

    got = [load_scenario(sweep.base, list(p.overrides)).description for p in sweep.points]
    assert got == ["1e3", "yes", "a: b", "", "#x", "07"]


def test_a_file_path_in_a_sweep_file_is_relative_to_the_sweep_file(tmp_path, capsys, monkeypatch):
    """The base scenario's trace (2 requests) and a trace of the same name beside the sweep
    file (3 requests): the sweep's value names the one beside the sweep file, from any folder."""
    base = dict(BASE, workload={"type": "trace", "path": "t.jsonl", "format": "kvsim"})
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "base.yaml").write_text(yaml.safe_dump(base))
    row = '{"arrival_s": 0, "prompt_tokens": 64, "output_tokens": 4}\n'
    (tmp_path / "scenarios" / "t.jsonl").write_text(row * 2)
    (tmp_path / "t.jsonl").write_text(row * 3)
    path = tmp_path / "s.yaml"
    path.write_text(
        "base: scenarios/base.yaml\ngrid: {workload.path: [t.jsonl, scenarios/t.jsonl]}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    _sweep(capsys, path, tmp_path / "out")
    assert [int(r["requests"]) for r in _rows(tmp_path / "out")] == [3, 2]


# ---------------------------------------------------------------- running


def test_a_point_is_kvsim_run_with_its_overrides(swept, tmp_path, capsys):
    path, out = swept
    run = tmp_path / "run"
    argv = [
        "run",
        str(path.parent / "base.yaml"),
        "--out",
        str(run),
        "--no-progress",
        "--set",
        "seed=3",
        "--set",
        "scheduler.chunking={type: adaptive, target_s: 0.02}",
    ]
    assert main(argv) == 0
    point = out / _folders(out)[2]
    for name in RUN_FILES:
        if name != "report.html":
            assert (point / name).read_bytes() == (run / name).read_bytes(), name
    # The point's report is the run's, with plotly.js from the sweep's one copy.
    from kvsim.simulator import load_scenario, simulate
    from kvsim.simulator.report import report_html

    scenario = load_scenario(path.parent / "base.yaml", argv[-3::2])
    page = report_html(simulate(scenario), scenario, "../../plotly.min.js")
    assert (point / "report.html").read_text() == page
    assert '<script charset="utf-8" src="../../plotly.min.js"></script>' in page
    assert (run / "report.html").stat().st_size > 4_000_000 > (point / "report.html").stat().st_size
    from plotly.offline import get_plotlyjs

    assert (out / "plotly.min.js").read_text() == get_plotlyjs()
    meta = json.loads((point / "point.json").read_text())
    assert meta == {"index": 2, "overrides": argv[-3::2]}
    resolved = yaml.safe_load((point / "scenario.resolved.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["scheduler"]["chunking"]["target_s"] == 0.02


def test_table_has_every_input_and_output_column(swept):
    path, out = swept
    rows = _rows(out)
    header = list(rows[0])
    assert header[:7] == [
        "point",
        "folder",
        "seed",
        "scheduler.chunking",
        "scheduler.chunking.type",
        "cluster.replicas",
        "scheduler.chunking.target_s",
    ]
    assert [r["point"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["scheduler.chunking"] for r in rows] == [
        "{type: fixed}",
        "{type: fixed}",
        "{type: adaptive, target_s: 0.02}",
        "{type: adaptive, target_s: 0.1}",
    ]
    assert [r["scheduler.chunking.type"] for r in rows] == ["fixed", "fixed"] + ["adaptive"] * 2
    assert [r["cluster.replicas"] for r in rows] == ["1", "2", "", ""]
    assert [r["scheduler.chunking.target_s"] for r in rows] == ["", "", "0.02", "0.1"]
    # Every output column is the point's summary.json, flattened by hand here.
    for r in rows:
        summary = json.loads((out / r["folder"] / "summary.json").read_text())
        assert r["ttft_s.p99"] == repr(summary["ttft_s"]["p99"])
        assert r["throughput.requests_per_s"] == repr(summary["throughput"]["requests_per_s"])
        assert r["requests"] == "40" and r["latency_calibrated"] == "false"
        assert r["job_latency_s.p99"] == "" and summary["job_latency_s"]["p99"] is None
        flat = {}
        stack = [("", summary)]
        while stack:
            prefix, d = stack.pop()
            for k, v in d.items():
                if isinstance(v, dict):
                    stack.append((f"{prefix}{k}.", v))
                else:
                    flat[f"{prefix}{k}"] = v
        assert isinstance(flat.pop("replicas"), list)  # one record per replica: not a column
        assert set(flat) <= set(header) and "replicas" not in header
    text = (out / "results.csv").read_text()
    assert str(path.parent) not in text  # no absolute paths in the table
    table = pq.read_table(out / "results.parquet")
    assert table.column_names == header
    types = {f.name: str(f.type) for f in table.schema}
    assert types["point"] == "int64" and types["cluster.replicas"] == "int64"
    assert types["scheduler.chunking.target_s"] == "double" and types["ttft_s.p99"] == "double"
    assert types["latency_calibrated"] == "bool" and types["job_latency_s.p99"] == "null"
    assert table.column("cluster.replicas").to_pylist() == [1, 2, None, None]
    assert table.column("ttft_s.p99").to_pylist() == [float(r["ttft_s.p99"]) for r in rows]


def test_same_sweep_gives_identical_files_in_any_completion_order(swept, tmp_path, capsys):
    path, out = swept
    again = tmp_path / "again"
    _sweep(capsys, path, again, "--workers", "1")
    for name in OUT_FILES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    assert _folders(again) == _folders(out)


def _figures(report: str, layouts: list | None = None) -> list[list[dict]]:
    """The traces of each chart, read from the Plotly.newPlot calls of the report (and each
    chart's layout appended to ``layouts``)."""
    out = []
    decoder = json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"kvsim-sweep-(\d+)",\s*', report):
        assert int(m.group(1)) == len(out)  # fixed ids, in order
        data, end = decoder.raw_decode(report, m.end())
        out.append(data)
        if layouts is not None:
            layouts.append(decoder.raw_decode(report, report.index("{", end))[0])
    return out


def test_report_draws_curves_and_each_series_pareto_front(swept):
    path, out = swept
    report = (out / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and "<script src=" not in report
    charts = _figures(report)
    assert len(charts) == 2
    assert all(t["type"] == "scatter" for c in charts for t in c)  # SVG, never WebGL
    rows = _rows(out)
    curve = charts[0]
    assert [t["x"] for t in curve] == [[1, 2]]  # points 2 and 3 have no replicas
    assert curve[0]["y"] == [float(rows[0]["ttft_s.p99"]), float(rows[1]["ttft_s.p99"])]
    front_traces = [t for t in charts[1] if t["mode"] == "markers" and t["name"] != "all points"]
    assert [t["name"] for t in front_traces] == ["fixed", "adaptive"]
    for trace in front_traces:
        group = [r for r in rows if r["scheduler.chunking.type"] == trace["name"]]
        pts = [(float(r["ttft_s.p99"]), float(r["throughput.requests_per_s"])) for r in group]
        # Brute force: lower TTFT and higher throughput are better.
        front = sorted(
            p for p in pts if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)
        )
        assert list(zip(trace["x"], trace["y"], strict=True)) == front


def test_default_charts_one_per_numeric_override(tmp_path, capsys):
    path = _write(
        tmp_path,
        "base: base.yaml\nset: {slo.ttft_s: 1.5}\ngrid: {cluster.replicas: [1, 2], seed: [1, 2]}\n",
    )
    out = tmp_path / "out"
    _sweep(capsys, path, out)
    layouts: list[dict] = []
    charts = _figures((out / "report.html").read_text(), layouts)
    assert len(charts) == 2
    assert [t["name"] for t in charts[0]] == ["1", "2"]  # one line per seed
    assert [t["x"] for t in charts[0]] == [[1, 2], [1, 2]]
    assert [t["name"] for t in charts[1]] == ["1", "2"]  # one line per replica count
    assert [t["x"] for t in charts[1]] == [[1, 2], [1, 2]]
    assert [
        (
            lay["xaxis"]["title"]["text"],
            lay["yaxis"]["title"]["text"],
            lay["legend"]["title"]["text"],
        )
        for lay in layouts
    ] == [
        ("cluster.replicas", "ttft_s.p99", "seed"),
        ("seed", "ttft_s.p99", "cluster.replicas"),
    ]
    rows = _rows(out)
    assert charts[1][0]["y"] == [float(rows[i]["ttft_s.p99"]) for i in (0, 1)]  # replicas 1
    # The summary repeats slo.ttft_s, an override column here: its copy is summary.slo.ttft_s.
    header = list(rows[0])
    assert header[2:5] == ["slo.ttft_s", "cluster.replicas", "seed"]
    assert [(r["slo.ttft_s"], r["summary.slo.ttft_s"], r["slo.tpot_s"]) for r in rows] == [
        ("1.5", "1.5", "0.1")
    ] * 4
    assert "slo.ttft_s" not in header[5:]


# ---------------------------------------------------------------- resume and refusals


def test_resume_reuses_done_points_and_reruns_an_incomplete_one(swept, tmp_path, capsys):
    path, first = swept
    out = tmp_path / "out"
    shutil.copytree(first, out)
    folders = _folders(out)
    before = {f: (out / f / "summary.json").stat().st_mtime_ns for f in folders}
    (out / folders[1] / "requests.csv").unlink()
    (out / "points" / ".1-deadbeef.x").mkdir()  # a staging folder an interrupt left behind
    text = _sweep(capsys, path, out)
    assert "(1 ran, 3 reused)" in text
    marks = [line.split()[-1] for line in text.splitlines()[2:6]]
    assert marks == ["reused", "ran", "reused", "reused"]
    after = {f: (out / f / "summary.json").stat().st_mtime_ns for f in folders}
    assert [after[f] == before[f] for f in folders] == [True, False, True, True]
    assert (out / folders[1] / "requests.csv").read_bytes() == (
        first / folders[1] / "requests.csv"
    ).read_bytes()
    assert sorted(p.name for p in (out / "points").iterdir()) == sorted(
        Path(f).name for f in folders
    )
    for name in OUT_FILES:
        assert (out / name).read_bytes() == (first / name).read_bytes(), name


def test_a_folder_of_another_sweep_is_refused_unless_forced(swept, tmp_path, capsys):
    path, first = swept
    out = tmp_path / "out"
    shutil.copytree(first, out)
    other = _write(
        tmp_path / "other", UNION.replace("cluster.replicas: [1, 2]", "cluster.replicas: [1, 3]")
    )
    err = _error(capsys, ["sweep", str(other), "--out", str(out), "--no-progress"])
    assert f"--out {out}: holds the results of a different sweep" in err and "--force" in err
    assert _rows(out) == _rows(first)  # nothing touched
    text = _sweep(capsys, other, out, "--force")
    assert "(1 ran, 3 reused)" in text  # only the point with 3 replicas is new
    new = _folders(out)
    assert sorted(p.name for p in (out / "points").iterdir()) == sorted(Path(f).name for f in new)
    assert _rows(out)[1]["cluster.replicas"] == "3"
    # A folder that is not a sweep's is refused too.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    err = _error(capsys, ["sweep", str(path), "--out", str(stranger)])
    assert "exists and holds no sweep" in err
    assert (stranger / "notes.txt").read_text() == "mine"


def test_a_changed_base_scenario_makes_another_sweep(swept, tmp_path, capsys):
    path, first = swept
    folder = tmp_path / "copy"
    shutil.copytree(path.parent, folder)
    out = folder / "out"
    base = yaml.safe_load((folder / "base.yaml").read_text())
    base["workload"]["rate"] = 25.0
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    err = _error(capsys, ["sweep", str(folder / "s.yaml"), "--out", str(out), "--no-progress"])
    assert "holds the results of a different sweep" in err
    assert "(4 ran, 0 reused)" in _sweep(capsys, folder / "s.yaml", out, "--force")
    for f in _folders(out):
        assert (
            yaml.safe_load((out / f / "scenario.resolved.yaml").read_text())["workload"]["rate"]
            == 25.0
        )


def test_a_point_folder_of_other_overrides_is_refused_unless_forced(swept, tmp_path, capsys):
    path, first = swept
    out = tmp_path / "out"
    shutil.copytree(first, out)
    folder = out / _folders(out)[0]
    meta = json.loads((folder / "point.json").read_text())
    meta["overrides"][-1] = "cluster.replicas=7"
    (folder / "point.json").write_text(json.dumps(meta))
    err = _error(capsys, ["sweep", str(path), "--out", str(out), "--no-progress"])
    assert f"{_folders(out)[0]} holds the result of other overrides" in err
    assert "(1 ran, 3 reused)" in _sweep(capsys, path, out, "--force")
    assert json.loads((folder / "point.json").read_text())["overrides"][-1] == "cluster.replicas=1"


def test_the_driver_gets_each_point_as_it_finishes(tmp_path):
    """Point 1 finishes only once the driver has handled point 0: results are not held back
    until every point is done (that is what keeps finished points through a Ctrl-C)."""
    from helpers import wait_for_file

    from kvsim.simulator.sweep.execute import run_local

    seen = tmp_path / "point-0-handled"
    got = []

    def on_result(index, files, error):
        got.append((index, files, error))
        seen.touch()

    run_local([(0, str(seen), []), (1, str(seen), [])], 2, None, on_result, task=wait_for_file)
    assert got == [(0, {"saw": b"no"}, None), (1, {"saw": b"yes"}, None)]


@pytest.mark.parametrize(
    "sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_keeps_finished_points_and_the_same_command_resumes(
    tmp_path, capsys, sig, status, word
):
    # Point 0 is quick and point 1 takes over a second: Ctrl-C lands while point 1 runs.
    path = _write(
        tmp_path,
        "base: base.yaml\ngrid:\n  - {seed: [1]}\n"
        "  - {seed: [2], workload.requests: [15000], workload.rate: [400.0]}\n"
        "  - {seed: [3, 4]}\n",
    )
    out = tmp_path / "out"
    argv = ["sweep", str(path), "--out", str(out), "--workers", "1", "--no-progress"]
    p = subprocess.Popen(
        [sys.executable, "-m", "kvsim.simulator.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A process started in the background by a shell ignores SIGINT; a user's terminal
        # does not, and neither does the sweep here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not list(pathlib.Path(out / "points").glob("*/point.json")):
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == status
    done = int(err.split(f"kvsim: {word}; ")[1].split(" of 4")[0])
    assert 1 <= done < 4 and "Traceback" not in err
    assert err.strip().endswith(f"points done in {out}/ (the same command resumes)")
    finished = sorted(f.parent.name for f in (out / "points").glob("*/point.json"))
    assert len(finished) == done and not (out / "results.csv").exists()
    assert f"({4 - done} ran, {done} reused)" in _sweep(capsys, path, out, "--workers", "2")
    assert len(_rows(out)) == 4


def test_policies_from_a_policy_path(tmp_path, capsys):
    """A dotted policy path is imported from --policy-path in the driver and in the workers, as
    `kvsim run --policy-path` does; without it the point is refused before anything runs."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "kvsim_test_sweep_policy.py").write_text(
        "class Evict:\n"
        "    def __init__(self, context):\n"
        "        pass\n\n"
        "    def key(self, node):\n"
        "        return (node.last_access_ns, -node.depth)\n"
    )
    path = _write(
        tmp_path,
        "base: base.yaml\nset: {cache.num_gpu_blocks: 300}\n"
        "grid: {cache.eviction: [lru, 'kvsim_test_sweep_policy:Evict']}\n",
    )
    out = tmp_path / "out"
    err = _error(capsys, ["sweep", str(path), "--out", str(out), "--no-progress"])
    point = "point 1 (--set cache.num_gpu_blocks=300 --set cache.eviction=kvsim_test_sweep_policy"
    assert f"{point}:Evict)" in err
    assert "cannot be imported" in err and not out.exists()
    _sweep(capsys, path, out, "--policy-path", str(policies))
    rows = _rows(out)
    assert [r["cache.eviction"] for r in rows] == ["lru", "kvsim_test_sweep_policy:Evict"]
    assert int(rows[1]["evictions"]) > 0
    # The policy orders victims as LRU does (oldest release first, deepest first among equals).
    assert rows[1]["ttft_s.p99"] == rows[0]["ttft_s.p99"]
    # A worker in a fresh interpreter (a Ray node's) imports the policy from the task's folders.
    code = (
        "import sys; from kvsim.simulator.sweep.execute import run_point; "
        "i, files, error = run_point((1, sys.argv[1], sys.argv[3:], (sys.argv[2],), '.', ())); "
        "print(error or files['summary.json'].decode())"
    )
    overrides = load_sweep(path).points[1].overrides
    argv = [sys.executable, "-c", code, str(tmp_path / "base.yaml"), str(policies), *overrides]
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == json.loads(
        (out / rows[1]["folder"] / "summary.json").read_text()
    )


# ---------------------------------------------------------------- bad input

GOOD = {"base": "base.yaml", "grid": {"cluster.replicas": [1, 2]}}


@pytest.mark.parametrize(
    "doc, expected",
    [
        ("- 1\n", ["a sweep file is a YAML mapping"]),
        ("grid: [\n", [":2: not valid YAML"]),
        ({**GOOD, "gird": 1}, ["unknown key 'gird'", "did you mean 'grid'?"]),
        ({"grid": GOOD["grid"]}, ["base: required field is missing"]),
        ({**GOOD, "base": "nope.yaml"}, ["base: scenario file", "nope.yaml not found"]),
        ({**GOOD, "base": 3}, ["base: 3 is not allowed", "a scenario file path"]),
        ({**GOOD, "name": "a/b"}, ["name: 'a/b' is not allowed", "runs/<name>"]),
        ({**GOOD, "set": [1]}, ["set: [1] is not allowed", "a mapping of path → value"]),
        (
            {**GOOD, "set": {"cluster..replicas": 1}},
            ["set: 'cluster..replicas' is not allowed", "dotted field names"],
        ),
        ({"base": "base.yaml"}, ["grid: required field is missing"]),
        ({**GOOD, "grid": 3}, ["grid: 3 is not allowed", "list of values"]),
        ({**GOOD, "grid": []}, ["grid: [] is not allowed"]),
        ({**GOOD, "grid": [{}]}, ["grid[0]: {} is not allowed"]),
        (
            {**GOOD, "grid": {"cluster.replicas": 4}},
            ["grid.cluster.replicas: 4 is not allowed", "a non-empty list"],
        ),
        ({**GOOD, "grid": [GOOD["grid"], {"seed": []}]}, ["grid[1].seed: [] is not allowed"]),
        ({**GOOD, "set": {"cluster.replicas": 1}}, ["grid.cluster.replicas: also under set:"]),
        (
            {**GOOD, "grid": {"seed": list(range(101)), "cluster.replicas": list(range(1, 101))}},
            ["grid: 10100 points is not allowed", "at most 10000"],
        ),
        ({**GOOD, "plots": {"x": "a"}}, ["plots: {'x': 'a'} is not allowed", "a list of charts"]),
        ({**GOOD, "plots": [{"x": "cluster.replicas"}]}, ["plots[0].y: required field"]),
        (
            {**GOOD, "plots": [{"x": "a", "y": "b", "colour": "red"}]},
            ["plots[0]: unknown key 'colour'"],
        ),
        (
            {**GOOD, "plots": [{"x": "a", "y": "b", "kind": "bar"}]},
            ["plots[0].kind: 'bar' is not allowed: curve or pareto"],
        ),
        (
            {**GOOD, "plots": [{"x": "a", "y": "b", "maximize_y": True}]},
            ["plots[0].maximize_y: True is not allowed: only with kind: pareto"],
        ),
        (
            {**GOOD, "plots": [{"x": "a", "y": "b", "log_x": "yes"}]},
            ["plots[0].log_x: 'yes' is not allowed: true or false"],
        ),
        ({**GOOD, "plots": [{"x": "a", "y": 2}]}, ["plots[0].y: 2 is not allowed"]),
        # Points are checked as scenarios before any runs.
        (
            {**GOOD, "grid": {"cluster.replicas": [1, "many"]}},
            ["point 1 (--set cluster.replicas=many)", "cluster.replicas: 'many' is not allowed"],
        ),
        ({**GOOD, "grid": {"cache.evicton": ["lru"]}}, ["point 0", "did you mean 'eviction'"]),
        (
            {**GOOD, "grid": {"cluster.replicas": [1, 1]}},
            ["point 1 (--set cluster.replicas=1) is the same scenario as point 0"],
        ),
    ],
)
def test_bad_sweep_file_is_one_line(tmp_path, capsys, doc, expected):
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    path = _write(tmp_path, text)
    out = tmp_path / "out"
    err = _error(capsys, ["sweep", str(path), "--out", str(out), "--no-progress"])
    assert err.startswith(f"kvsim: error: {path}")
    for fragment in expected:
        assert fragment in err, err
    assert not out.exists()  # nothing ran


def test_a_plot_of_no_column_is_an_error_after_the_table(tmp_path, capsys):
    path = _write(tmp_path, "base: base.yaml\ngrid: {seed: [1]}\nplots: [{x: seed, y: ttft_p99}]\n")
    out = tmp_path / "out"
    err = _error(capsys, ["sweep", str(path), "--out", str(out), "--no-progress"])
    assert f"{path}: plots[0].y: 'ttft_p99' is not allowed: not a column" in err
    assert (out / "results.csv").is_file() and not (out / "report.html").exists()


def test_console_script_and_missing_ray(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path, "base: base.yaml\ngrid: {seed: [1]}\nbogus: 1\n")
    p = subprocess.run(
        [sys.executable, "-m", "kvsim.simulator.cli", "sweep", str(path)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"kvsim: error: {path}: unknown key 'bogus'")
    path.write_text("base: base.yaml\ngrid: {seed: [1]}\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is absent
    err = _error(capsys, ["sweep", str(path), "--out", str(tmp_path / "o"), "--executor", "ray"])
    assert "--executor ray needs Ray" in err and "pip install 'kvsim[ray]'" in err
    err = _error(capsys, ["sweep", str(path), "--ray-address", "auto"])
    assert "--ray-address: only with --executor ray" in err


# ---------------------------------------------------------------- Pareto fronts


def test_pareto_front_by_hand():
    xs = [1, 2, 2, 3, 4, 1, 5, 3, 3]
    ys = [5, 3, 4, 3, 1, 6, 1, 2, 2]
    # (1,6) loses to (1,5); (2,4) and (3,3) to (2,3); (5,1) to (4,1); the two (3,2) tie: both stay.
    assert pareto_front(xs, ys) == [0, 1, 7, 8, 4]
    pts = [(xs[i], ys[i]) for i in [0, 1, 7, 8, 4]]
    assert staircase(pts) == [(1, 5), (2, 5), (2, 3), (3, 3), (3, 2), (4, 2), (4, 1)]
    # Throughput (maximised) against latency (minimised): (2,2) loses to (3,2).
    assert pareto_front([1, 2, 3, 4], [1, 2, 2, 5], maximize_x=True) == [0, 2, 3]
    assert staircase([(1, 1), (3, 2), (4, 5)], maximize_x=True) == [
        (1, 1),
        (1, 2),
        (3, 2),
        (3, 5),
        (4, 5),
    ]
    # Both maximised: (1,3) loses to (2,3).
    assert pareto_front([1, 2, 3], [3, 3, 1], maximize_x=True, maximize_y=True) == [1, 2]
    assert staircase([(2, 3), (3, 1)], maximize_x=True) == [(2, 3), (2, 1), (3, 1)]
    # Minimised x, maximised y: only (1,6) survives, and equal x with a worse y loses.
    assert pareto_front(xs, ys, maximize_y=True) == [5]
    assert pareto_front([2, 2, 1], [1, 3, 0], maximize_y=True) == [2, 1]
    assert pareto_front([], []) == [] and staircase([]) == []


# ---------------------------------------------------------------- Ray


def test_ray_executor_gives_the_local_pool_s_files(swept, tmp_path, capsys):
    import ray  # the test extra installs it: never skipped

    path, local = swept
    out = tmp_path / "ray"
    text = _sweep(capsys, path, out, "--executor", "ray", "--workers", "2")
    assert "(4 ran, 0 reused)" in text and not ray.is_initialized()
    for name in OUT_FILES:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    for folder in _folders(local):
        for name in (*RUN_FILES, "point.json"):
            assert (out / folder / name).read_bytes() == (local / folder / name).read_bytes()
