"""What got in a new user's way, pinned: `--version`, where a path given with `--set` is
resolved, the key a trace workload has instead of `rate`, `validate` refusing what `run`
refuses, and `calibrate --dry-run` without the kernels extra."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, write_kvsim_trace

from kvsim.simulator.cli import main

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("kvsim: error: ")
    return err.removeprefix("kvsim: error: ")


def test_version_is_the_project_s(capsys):
    # (tomllib is Python 3.11+; kvsim supports 3.10)
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"kvsim {version}\n"
    kvsim = str(Path(sys.executable).with_name("kvsim"))  # the console script installed here
    p = subprocess.run([kvsim, "--version"], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, f"kvsim {version}\n")


def _trace(path: Path, requests: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"arrival_s": i / 10, "prompt_tokens": 64, "output_tokens": 4} for i in range(requests)]
    return write_kvsim_trace(path, rows)


def _trace_scenario(folder: Path, trace: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": "paths",
        "model": "llama-3.1-8b",
        "hardware": "h100-sxm",
        "cache": {"num_gpu_blocks": 1024},
        "workload": {"type": "trace", "path": trace, "format": "kvsim"},
    }
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_path_in_the_file_is_the_file_s_a_path_on_the_command_line_is_the_cwd_s(
    tmp_path, capsys, monkeypatch
):
    """The scenario's own trace (3 requests) sits beside it; a trace of the same name in the
    current folder has 5: `--set workload.path=t.jsonl` means the one in the current folder."""
    s = _trace_scenario(tmp_path / "scenarios", "t.jsonl")
    _trace(tmp_path / "scenarios" / "t.jsonl", 3)
    here = tmp_path / "work"
    _trace(here / "t.jsonl", 5)
    _trace(here / "sub" / "u.jsonl", 7)
    monkeypatch.chdir(here)
    assert main(["run", str(s), "--json", "--out", "a", "--no-progress"]) == 0
    assert '"requests": 3' in capsys.readouterr().out
    argv = ["run", str(s), "--json", "--no-progress", "--set", "workload.path=t.jsonl"]
    assert main([*argv, "--out", "b"]) == 0
    assert '"requests": 5' in capsys.readouterr().out
    resolved = yaml.safe_load((here / "b" / "scenario.resolved.yaml").read_text())
    assert resolved["workload"]["path"] == str(here / "t.jsonl")
    # Inside a mapping value too; and a path only the scenario's folder has is not found.
    mapping = "workload={type: trace, path: sub/u.jsonl, format: kvsim}"
    assert main(["run", str(s), "--json", "--no-progress", "--out", "c", "--set", mapping]) == 0
    assert '"requests": 7' in capsys.readouterr().out
    (tmp_path / "scenarios" / "only-there.jsonl").write_text((here / "t.jsonl").read_text())
    err = _error(capsys, ["validate", str(s), "--set", "workload.path=only-there.jsonl"])
    assert err == f"{s}: workload.path: trace file {here / 'only-there.jsonl'} not found"
    # A catalog model is a name, not a path: left alone.
    assert main(["validate", str(s), "--set", "model=mistral-7b"]) == 0


def test_a_model_config_on_the_command_line_is_the_cwd_s(tmp_path, capsys, monkeypatch):
    s = _trace_scenario(tmp_path / "scenarios", "t.jsonl")
    _trace(tmp_path / "scenarios" / "t.jsonl", 3)
    (tmp_path / "work").mkdir()
    config = {"hidden_size": 512, "num_hidden_layers": 2, "vocab_size": 1000,
              "num_attention_heads": 8, "intermediate_size": 1024}  # fmt: skip
    (tmp_path / "work" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path / "work")
    assert main(["validate", str(s), "--set", "model=config.json"]) == 0
    assert f"valid ({tmp_path / 'work' / 'config.json'} on 1×" in capsys.readouterr().out


def test_rate_on_a_trace_names_rate_scale(tmp_path, capsys):
    s = _trace_scenario(tmp_path, "t.jsonl")
    _trace(tmp_path / "t.jsonl", 3)
    err = _error(capsys, ["run", str(s), "--set", "workload.rate=5", "--out", str(tmp_path / "o")])
    assert err == f"{s}: workload.trace.rate: unknown key 'rate'; did you mean 'rate_scale'?"
    # A key that resembles none lists what the section allows.
    err = _error(capsys, ["validate", str(s), "--set", "workload.zzz=5"])
    assert err == (
        f"{s}: workload.trace.zzz: unknown key 'zzz'; allowed here: format, max_requests, path, "
        "rate_scale, type"
    )
    err = _error(capsys, ["validate", str(QUICKSTART), "--set", "workload.rate_scal=3"])
    assert err.endswith("workload.synthetic.rate_scal: unknown key 'rate_scal'; did you mean "
                        "'rate_scale'?")  # fmt: skip


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["cache.layout=msa", "cache.eviction={type: asymcache, p: 1.5}"],
         "cache.eviction: eviction policy 'asymcache': p must be in (0, 1), not 1.5"),
        (["cache.eviction={type: lru, p: 1}"],
         "cache.eviction: lru: bad parameters {'p': 1} (got an unexpected keyword argument 'p')"),
        (["cache.eviction={type: continuum, ttl_s: -3}"],
         "cache.eviction: eviction policy 'continuum': ttl_s is -3; allowed: a number of seconds "
         "≥ 0 or 'auto'"),
        (["cache.eviction={type: max_score, window_s: 0}"],
         "cache.eviction: eviction policy 'max_score': window_s must be positive and finite, "
         "not 0"),
        (["routing={type: least_loaded, x: 1}"],
         "routing: least_loaded: bad parameters {'x': 1} (got an unexpected keyword argument 'x')"),
        (["scheduler.chunking={type: adaptive, target_s: 0}"],
         "scheduler.chunking.adaptive.target_s: 0 is not allowed: Input should be greater than 0"),
    ],
)  # fmt: skip
def test_validate_refuses_what_run_refuses(tmp_path, capsys, overrides, expected):
    sets = [x for o in overrides for x in ("--set", o)]
    err = _error(capsys, ["validate", str(QUICKSTART), *sets])
    assert err == f"{QUICKSTART}: {expected}"
    assert _error(capsys, ["run", str(QUICKSTART), *sets, "--out", str(tmp_path / "o")]) == err
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_parameter_is_refused_by_validate_as_by_run(tmp_path, capsys):
    spc = ROOT / "scenarios" / "spc_quality.yaml"
    sets = ["--set", "cache.checkpoint={type: every, k: -1}"]
    err = _error(capsys, ["validate", str(spc), *sets])
    assert err == f"{spc}: cache.checkpoint: checkpoint policy 'every': k = -1; allowed: an " \
        "integer ≥ 1"  # fmt: skip
    assert _error(capsys, ["run", str(spc), *sets, "--out", str(tmp_path / "o")]) == err


_NO_KERNELS = (
    "import sys; sys.modules['torch'] = None; sys.modules['triton'] = None; "
    "from kvsim.simulator.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_calibrate_dry_run_needs_no_kernels_extra():
    """As if torch and triton were not installed (an import of either fails)."""
    p = subprocess.run([sys.executable, "-c", _NO_KERNELS, "calibrate", "--dry-run", "--tiny"],
                       capture_output=True, text=True)  # fmt: skip
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout.startswith("calibration grid for llama-3.1-8b (TP1, tiny):\n")
    assert "points; expected about" in p.stdout.splitlines()[-1]
    p = subprocess.run([sys.executable, "-c", _NO_KERNELS, "calibrate", "--tiny"],
                       capture_output=True, text=True)  # fmt: skip
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == (
        "kvsim: error: kvsim calibrate needs the kernels extra: pip install -e '.[kernels]' "
        "(torch, triton)\n"
    )
