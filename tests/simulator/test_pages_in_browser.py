"""The pages kvsim writes, opened in a real headless Chromium (the Debian package): each loads
without a console error or exception and draws every chart as SVG (no WebGL canvas).

Without Chromium these tests fail (they do not skip): .ci/run installs it where it is missing,
and the README says how to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from browser import Chromium, PageReport
from helpers import ROOT

from kvsim.simulator.cli import main

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


@pytest.fixture(scope="module")
def browser():
    with Chromium() as c:
        yield c


def _drawn(report: PageReport, ids: list[str]) -> None:
    assert report.errors == []
    assert report.canvases == 0
    assert [c["id"] for c in report.charts] == ids
    for c in report.charts:
        assert c["svgs"] >= 1 and c["traces"] >= 1 and c["paths"] >= 1, c


def _small(tmp_path: Path) -> Path:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"]["requests"] = 150
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_run_report(browser, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(_small(tmp_path)), "--out", str(out), "--no-progress"]) == 0
    seen = browser.open(out / "report.html")
    _drawn(seen, [
        "kvsim-ttft", "kvsim-tpot", "kvsim-e2e", "kvsim-queue-delay", "kvsim-ttft-by-arrival",
        "kvsim-throughput", "kvsim-hits", "kvsim-preemptions", "kvsim-queues", "kvsim-kv-use",
    ])  # fmt: skip
    assert seen.title == "kvsim · quickstart"
    assert seen.headings == ["Scenario", "Summary", "Charts", "Replicas"]


def test_a_sweep_report_and_a_point_s_report_with_the_shared_plotly(browser, tmp_path, capsys):
    base = _small(tmp_path)
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(
        f"base: {base.name}\ngrid: {{cluster.replicas: [1, 2]}}\n"
        "plots:\n  - {x: cluster.replicas, y: ttft_s.p99}\n"
        "  - {x: gpus, y: ttft_s.p99, kind: pareto}\n"
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    _drawn(browser.open(out / "report.html"), ["kvsim-sweep-0", "kvsim-sweep-1"])
    point = next((out / "points").iterdir())
    seen = browser.open(point / "report.html")
    assert len(seen.charts) == 10
    _drawn(seen, [c["id"] for c in seen.charts])


def test_a_comparison_report(browser, tmp_path, capsys):
    s = _small(tmp_path)
    for name, sets in (("a", []), ("b", ["--set", "cluster.replicas=3"])):
        argv = ["run", str(s), "--out", str(tmp_path / name), "--no-progress", *sets]
        assert main(argv) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    seen = browser.open(out / "report.html")
    _drawn(seen, [
        "kvsim-compare-ttft", "kvsim-compare-tpot", "kvsim-compare-e2e", "kvsim-compare-queue",
        "kvsim-compare-waiting", "kvsim-compare-kv-use",
    ])  # fmt: skip
    assert seen.headings == ["Runs", "Scenario differences", "Metrics", "Overlays"]


def test_a_plan_report(browser, tmp_path, capsys):
    out = tmp_path / "plan"
    argv = ["plan", str(_small(tmp_path)), "--slo", "ttft_p99=300ms,tpot_p99=40ms", "--rate",
            "25", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    seen = browser.open(out / "report.html")
    _drawn(seen, [f"kvsim-plan-{i}" for i in range(4)])
    assert seen.headings == ["Answer", "Why", "Points tried"]


DISAGGREGATED = [
    "kvsim-ttft", "kvsim-tpot", "kvsim-e2e", "kvsim-queue-delay", "kvsim-handoff",
    "kvsim-ttft-by-arrival", "kvsim-throughput", "kvsim-hits", "kvsim-preemptions",
    "kvsim-queues", "kvsim-kv-use", "kvsim-links",
]  # fmt: skip


def test_a_disaggregated_run_report_with_its_link(browser, tmp_path, capsys):
    out = tmp_path / "run"
    scenario = ROOT / "scenarios" / "scd_bandwidth.yaml"
    assert main(["run", str(scenario), "--out", str(out), "--no-progress"]) == 0
    seen = browser.open(out / "report.html")
    _drawn(seen, DISAGGREGATED)
    links = next(c for c in seen.charts if c["id"] == "kvsim-links")
    assert links["traces"] == 1  # the one link, pd
    assert seen.title == "kvsim · scd_bandwidth"
    assert seen.headings == ["Scenario", "Summary", "Charts", "Replicas"]


def test_a_cpu_tier_run_report_with_its_pcie_directions(browser, tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["--set", "cache.num_gpu_blocks=600", "--set", "cache.cpu_tier.size_gib=16",
            "--set", "cluster.replicas=1"]  # fmt: skip
    assert main(["run", str(_small(tmp_path)), "--out", str(out), "--no-progress", *sets]) == 0
    seen = browser.open(out / "report.html")
    ids = [c["id"] for c in seen.charts]
    assert ids[-1] == "kvsim-links" and "kvsim-handoff" not in ids
    _drawn(seen, ids)
    links = next(c for c in seen.charts if c["id"] == "kvsim-links")
    assert links["traces"] == 2  # PCIe host to device and device to host
    page = (out / "report.html").read_text()
    assert '"name":"pcie h2d"' in page and '"name":"pcie d2h"' in page


def test_a_split_plan_report(browser, tmp_path, capsys):
    out = tmp_path / "plan"
    argv = ["plan", str(ROOT / "scenarios" / "scd_bandwidth.yaml"), "--slo", "ttft_p99=1s",
            "--rate", "6", "--set", "transfer.codec=raw", "--set", "workload.requests=40",
            "--set", "workload.prompt_tokens.value=8000", "--set", "workload.output_tokens.value=2",
            "--out", str(out), "--no-progress", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    seen = browser.open(out / "report.html")
    _drawn(seen, [f"kvsim-plan-{i}" for i in range(3)])
    assert seen.headings == ["Answer", "Why", "Points tried"]
    # The TTFT chart: a line per total with a marker per split, the limit and the chosen split.
    totals = {p["replicas"] for p in json.loads((out / "plan.json").read_text())["points"]}
    ttft = seen.charts[0]
    assert ttft["traces"] == len(totals) + 2
    assert ttft["paths"] == sum(1 + (n - 1) for n in totals) + 2
