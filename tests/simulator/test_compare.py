"""kvsim compare: the scenario fields that differ, each metric of each run with its difference
from the first (absolute and relative, recomputed here from the summaries), compare.csv, the
overlaid CDFs (the runs' own digests), one-line errors, and never overwriting a comparison."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import yaml
from helpers import ROOT, plotly_figures

from kvsim.simulator import load_scenario, simulate
from kvsim.simulator.cli import main
from kvsim.simulator.digest import digest
from kvsim.simulator.output import write_results

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"]["requests"] = 120
    (tmp / "s.yaml").write_text(yaml.safe_dump(doc))
    out = []
    for name, sets in (("a", []), ("b", ["cluster.replicas=4", "routing=round_robin"])):
        s = load_scenario(tmp / "s.yaml", sets)
        res = simulate(s)
        write_results(tmp / name, s, res)
        out.append((tmp / name, res))
    return tmp, out


def _compare(capsys, *argv) -> str:
    assert main(["compare", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_side_by_side_with_differences(runs, capsys):
    tmp, [(a, ra), (b, rb)] = runs
    text = _compare(capsys, a, b, "--out", tmp / "cmp")
    lines = text.splitlines()
    assert lines[:6] == [
        "kvsim: compare 2 runs",
        f"  A: {a}/",
        f"  B: {b}/",
        "scenario differences:",
        "  cluster.replicas  A=2  B=4",
        "  routing.type      A=prefix_aware  B=round_robin",
    ]
    assert lines[-1] == f"results: {tmp / 'cmp'}/ (compare.csv, report.html)"
    sa, sb = ra.summary, rb.summary
    rows = {r[0]: r for r in csv.reader(io.StringIO((tmp / "cmp" / "compare.csv").read_text()))}
    assert rows["metric"] == ["metric", "A", "B", "B − A", "B vs A"]
    p99a, p99b = sa["ttft_s"]["p99"], sb["ttft_s"]["p99"]
    assert rows["TTFT p99 (ms)"] == [
        "TTFT p99 (ms)", f"{p99a * 1e3:.1f}", f"{p99b * 1e3:.1f}",
        f"{(p99b - p99a) * 1e3:+.1f}", f"{(p99b - p99a) / p99a:+.1%}",
    ]  # fmt: skip
    assert rows["GPUs"] == ["GPUs", "2", "4", "+2", "+100.0%"]
    ua, ub = sa["utilisation"], sb["utilisation"]
    assert rows["utilisation"][3:] == [f"{(ub - ua) * 100:+.1f} pt", f"{(ub - ua) / ua:+.1%}"]
    assert rows["dropped"] == ["dropped", "0", "0", "+0", "-"]  # no relative change from 0
    # The terminal shows the same rows.
    assert any(line.split() == ["GPUs", "2", "4", "+2", "+100.0%"] for line in lines)


def test_the_overlays_are_each_run_s_distributions(runs, capsys):
    tmp, [(a, ra), (b, rb)] = runs
    _compare(capsys, a, b, "--out", tmp / "cmp2")
    figs = plotly_figures((tmp / "cmp2" / "report.html").read_text())
    assert list(figs) == [
        "kvsim-compare-ttft", "kvsim-compare-tpot", "kvsim-compare-e2e", "kvsim-compare-queue",
        "kvsim-compare-waiting", "kvsim-compare-kv-use",
    ]  # fmt: skip
    ttft, _ = figs["kvsim-compare-ttft"]
    assert [t["name"] for t in ttft] == ["A: a", "A SLO", "B: b", "B SLO"]
    for trace, res in ((ttft[0], ra), (ttft[2], rb)):
        x, y = digest(res).cdf("ttft_s")
        assert trace["x"] == x.tolist() and trace["y"] == y.tolist()
    e2e, _ = figs["kvsim-compare-e2e"]
    assert e2e[1]["y"] == digest(rb).cdf("e2e_s")[1].tolist()
    kv, _ = figs["kvsim-compare-kv-use"]
    cols = ra.timeseries.columns()
    assert kv[0]["y"] == pytest.approx(cols["kv_use"].tolist(), abs=1e-15)
    assert np.allclose(kv[0]["x"], cols["time_s"])


def test_three_runs_and_never_overwriting(runs, capsys):
    tmp, [(a, _), (b, _)] = runs
    out = tmp / "cmp3"
    _compare(capsys, a, b, a, "--out", out)
    header = next(csv.reader(io.StringIO((out / "compare.csv").read_text())))
    assert header == ["metric", "A", "B", "C", "B − A", "B vs A", "C − A", "C vs A"]
    again = _compare(capsys, b, a, "--out", out)
    assert again.splitlines()[-1] == f"results: {out}-2/ (compare.csv, report.html)"
    assert next(csv.reader(io.StringIO((out / "compare.csv").read_text()))) == header
    assert "scenario differences: none" in _compare(capsys, a, a, "--out", out, "--force")


@pytest.mark.parametrize("case", ["one", "missing", "no summary", "bad json"])
def test_bad_input_is_one_line(runs, capsys, tmp_path, case):
    tmp, [(a, _), _] = runs
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{")
    argv, expected = {
        "one": ([a], "compare: give at least two run folders (the first is the reference)"),
        "missing": ([a, tmp_path / "nope"],
                    f"{tmp_path / 'nope'}: not a folder (a run's results folder, as kvsim run "
                    "writes)"),
        "no summary": ([a, tmp_path / "empty"],
                       f"{tmp_path / 'empty'}: no summary.json (not a kvsim run folder)"),
        "bad json": ([tmp_path / "broken", a],
                     f"{tmp_path / 'broken'}/summary.json: unreadable (JSONDecodeError)"),
    }[case]  # fmt: skip
    out = tmp_path / "out"
    assert main(["compare", *map(str, argv), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"kvsim: error: {expected}\n"
    assert not out.exists()


def test_the_csv_files_are_the_grid_with_plain_line_ends():
    """compare.csv, plan.csv and a sweep's results.csv: ``\\n`` line ends, quoting as csv does."""
    from kvsim.simulator.pages import grid_csv

    assert grid_csv(["run", "note"], [["a", "x,y"], ["b", ""]]) == 'run,note\na,"x,y"\nb,\n'
