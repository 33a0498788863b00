"""Runs never overwrite: a results folder that holds a run's files is kept, and the new run goes
to the first free sibling (<out>-2, <out>-3, …) — also when another run takes the name while this
one runs — unless --force; the folder used is printed at the end."""

from __future__ import annotations

import json
import os

import yaml
from helpers import ROOT

from kvsim.simulator import load_scenario, simulate
from kvsim.simulator import output as output_module
from kvsim.simulator.cli import main
from kvsim.simulator.output import FILES, ResultsFolder

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _scenario(tmp_path, requests: int = 40):
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"]["requests"] = requests
    path = tmp_path / f"s{requests}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(capsys, *argv) -> str:
    assert main(["run", *map(str, argv), "--no-progress"]) == 0
    return capsys.readouterr().out.splitlines()[-1]


def _requests(folder) -> int:
    return json.loads((folder / "summary.json").read_text())["requests"]


def test_a_second_run_goes_beside_the_first(tmp_path, capsys):
    out = tmp_path / "out"
    first = _run(capsys, _scenario(tmp_path, 40), "--out", out)
    assert first.startswith(f"results: {out}/ (summary.json")
    before = {n: (out / n).read_bytes() for n in FILES}
    second = _run(capsys, _scenario(tmp_path, 30), "--out", out)
    assert second == (
        f"results: {out}-2/ (summary.json, requests.csv, timeseries.csv, report.html, "
        f"scenario.resolved.yaml); {out}/ held an earlier run (kept; --force replaces it)"
    )
    assert {n: (out / n).read_bytes() for n in FILES} == before
    assert (_requests(out), _requests(tmp_path / "out-2")) == (40, 30)
    third = _run(capsys, _scenario(tmp_path, 20), "--out", out)
    assert third.startswith(f"results: {out}-3/ ")
    assert sorted(os.listdir(tmp_path)) == ["out", "out-2", "out-3", "s20.yaml", "s30.yaml",
                                            "s40.yaml"]  # fmt: skip


def test_force_replaces_and_the_default_folder_is_kept_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _scenario(tmp_path, 40)
    _run(capsys, s)
    assert _run(capsys, s).startswith("results: runs/quickstart-2/ ")
    forced = _run(capsys, _scenario(tmp_path, 30), "--force")
    assert forced.startswith("results: runs/quickstart/ ") and "held" not in forced
    assert (_requests(tmp_path / "runs" / "quickstart"), _requests(
        tmp_path / "runs" / "quickstart-2")) == (30, 40)  # fmt: skip
    assert sorted(os.listdir(tmp_path / "runs")) == ["quickstart", "quickstart-2"]


def test_json_output_stays_json_and_says_the_folder_on_stderr(tmp_path, capsys):
    s = _scenario(tmp_path)
    out = tmp_path / "o"
    assert main(["run", str(s), "--out", str(out), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["requests"] == 40
    assert captured.err == f"results: {out}/\n"
    assert main(["run", str(s), "--out", str(out), "--json", "--no-progress"]) == 0
    assert capsys.readouterr().err == (
        f"results: {out}-2/; {out}/ held an earlier run (kept; --force replaces it)\n"
    )


def test_a_name_taken_while_the_run_ran_moves_on_to_the_next(tmp_path):
    """Two runs into one new folder: the second to finish finds the name taken at its final
    rename and takes the next free one; a taken -2 is skipped."""
    s = load_scenario(_scenario(tmp_path))
    res = simulate(s)
    out = tmp_path / "out"
    with ResultsFolder(out) as folder:
        assert folder.out == out and not folder.relocated
        for name, data in (("out", "other run"), ("out-2", "another")):
            (tmp_path / name).mkdir()
            (tmp_path / name / "summary.json").write_text(data)
        assert folder.commit(s, res) == tmp_path / "out-3"
    assert folder.relocated
    assert (out / "summary.json").read_text() == "other run"
    assert sorted(os.listdir(tmp_path / "out-3")) == sorted(FILES)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".kvsim-staging-")]


def test_a_folder_without_results_is_written_into(tmp_path, capsys):
    """An existing empty folder, or one of other files (a mount point), is the destination."""
    out = tmp_path / "volume"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run(capsys, _scenario(tmp_path), "--out", out).startswith(f"results: {out}/ ")
    assert sorted(os.listdir(out)) == sorted([*FILES, "notes.txt"])
    assert output_module.holds_results(out)
