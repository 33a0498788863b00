"""Every shell command in the README's ```bash blocks, run as written in a subprocess, on small
inputs: in a scratch folder laid out like the checkout (a copy of ``scenarios/`` whose every
workload is capped with ``workload.max_requests``, ``calibration/`` beside it, the shared traces
one level up), in the README's order (``kvsim compare`` reads the runs made before it). Each must
exit with status 0. A command joined with ``&&`` is run part by part; the parts that need the
network or a GPU are listed in ``SKIPPED`` with why, and that list must match the README exactly,
so a new README command is either run here or listed."""

from __future__ import annotations

import ast
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

README = ROOT / "README.md"
MAX_REQUESTS = 60
"""Each scenario's workload is capped at this many requests."""

SKIPPED = {
    "python3 -m pip install -e .": "network (pip fetches the build backend)",
    'python3 -m pip install -e ".[kernels,test]"': "network",
    "python3 -m pytest": "the test suite itself: .ci/run runs it (checked below)",
    "python3 -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": (
        "network"
    ),
    'python3 -m pip install -e ".[ray]"': "network",
    "kvsim sweep scenarios/sweeps/quickstart_replicas.yaml --executor ray --out runs/qs-ray": (
        "needs the ray extra, installed from the network by the part before it"
    ),
    "kvsim calibrate --model llama-3.1-8b": "GPU",
}


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ```bash / ```sh blocks: continuation lines joined, comments
    dropped, ``&&`` chains split into their parts, in order."""
    return [c for block in readme_blocks(text) for c in block]


def readme_blocks(text: str) -> list[list[str]]:
    """:func:`readme_commands` block by block."""
    blocks = []
    for block in re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.M | re.S):
        commands: list[str] = []
        blocks.append(commands)
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
            lexer.whitespace_split, lexer.commenters = True, "#"
            words = list(lexer)
            if not words:
                continue
            # Keep the command as written (quotes included): cut at the comment's position.
            cut = _comment_at(line)
            command = " ".join(line[:cut].split())
            commands += [part.strip() for part in command.split(" && ")]
    return blocks


def _comment_at(line: str) -> int:
    """Where an unquoted ``#`` starting a word begins, or the line's length."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def test_the_commands_are_read_as_written():
    text = (
        "x\n```bash\n# a comment\nkvsim run a.yaml   # why\npip install 'b[c]' && kvsim x \\\n"
        '  --set y="#1"\n```\n```python\nnot_shell()\n```\n```sh\nls\n```\n'
    )
    assert readme_commands(text) == [
        "kvsim run a.yaml", "pip install 'b[c]'", 'kvsim x --set y="#1"', "ls",
    ]  # fmt: skip


def test_ci_runs_the_readme_s_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = readme_commands(README.read_text())
    assert [line for line in ci if "pytest" in line and not line.startswith("#")] == [
        "python3 -m pytest"
    ]
    assert "python3 -m pytest" in commands


def _scratch(tmp_path: Path) -> Path:
    """A folder laid out like the checkout, with small workloads."""
    cwd = tmp_path / "repo"
    shutil.copytree(ROOT / "scenarios", cwd / "scenarios")
    for path in (cwd / "scenarios").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        given = doc["workload"].get("max_requests") or MAX_REQUESTS
        doc["workload"]["max_requests"] = min(given, MAX_REQUESTS)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (cwd / "calibration").symlink_to(ROOT / "calibration")
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    return cwd


def _run_all(commands: list[str], cwd: Path, env: dict, ran: list[str]) -> None:
    for command in commands:
        if command in SKIPPED:
            continue
        r = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=180)  # fmt: skip
        assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        ran.append(command)


def test_every_readme_command_runs(tmp_path):
    blocks = readme_blocks(README.read_text())
    commands = [c for block in blocks for c in block]
    skipped = [c for c in commands if c in SKIPPED]
    assert sorted(set(skipped)) == sorted(SKIPPED), "SKIPPED must list README commands only"
    cwd = _scratch(tmp_path)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this kvsim
    env.pop("VIRTUAL_ENV", None)
    # Two lanes, each in the README's order: the calibration block (it writes only its own
    # files) beside everything else.
    calibration = [c for block in blocks if any("calibrate" in c for c in block) for c in block]
    rest = [c for c in commands if c not in calibration]
    ran_cal: list[str] = []
    ran: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        lane = pool.submit(_run_all, calibration, cwd, env, ran_cal)
        _run_all(rest, cwd, env, ran)
        lane.result()
    # Every command was run or listed, and what the runs wrote is where the README says.
    assert len(ran) + len(ran_cal) + len(skipped) == len(commands)
    assert "kvsim fit tiny/measurements.csv --out refit.yaml --accept-error" in ran_cal
    assert {"quickstart", "quickstart-2", "quickstart-replicas", "qs", "compare"} <= {
        p.name for p in (cwd / "runs").iterdir()
    }
    assert (cwd / "scenario.schema.json").stat().st_size > 0
    assert (cwd / "refit.yaml").is_file() and (cwd / ".venv" / "bin" / "activate").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml")))
def test_the_small_inputs_are_the_shipped_scenarios_capped(tmp_path, name):
    cwd = _scratch(tmp_path)
    doc = yaml.safe_load((cwd / "scenarios" / name).read_text())
    original = yaml.safe_load((ROOT / "scenarios" / name).read_text())
    given = original["workload"].pop("max_requests", None) or MAX_REQUESTS
    assert doc["workload"].pop("max_requests") == min(given, MAX_REQUESTS) == MAX_REQUESTS
    assert doc == original


def test_the_readme_s_python_example_runs(tmp_path):
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    assert len(blocks) == 1
    cwd = _scratch(tmp_path)
    code = blocks[0] + "\nprint(repr((res.summary['ttft_s']['p99'], res.requests[0]['ttft_s'])))\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    p99, first = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert isinstance(p99, float) and isinstance(first, float) and 0 < first <= p99 * 10


def test_the_readme_s_sweep_file_is_the_shipped_one():
    text = README.read_text()
    block = re.search(r"^```yaml\n# scenarios/sweeps/quickstart_replicas.yaml\n(.*?)^```", text,
                      flags=re.M | re.S)  # fmt: skip
    shipped = ROOT / "scenarios" / "sweeps" / "quickstart_replicas.yaml"
    assert yaml.safe_load(block[1]) == yaml.safe_load(shipped.read_text())
