"""Bad input never crashes kvsim or runs code: each case found by fuzzing the command line, pinned.

A user mistake is one line on stderr (``kvsim: error: …``), exit status 2, no traceback and no
results folder; a scenario is data (it names classes, it cannot run code); results are written
safely wherever ``--out`` points, or the run fails before it starts.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zstandard
from helpers import ROOT, shared_trace, write_kvsim_trace

from kvsim.simulator import load_scenario, simulate
from kvsim.simulator import output as output_module
from kvsim.simulator.cli import main

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _doc(**sections) -> dict:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"]["requests"] = 30
    for k, v in sections.items():
        doc[k] = v
    return doc


def _write(tmp_path: Path, doc, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return path


def _trace_doc(trace: Path, fmt: str = "kvsim", **cache) -> dict:
    return {
        "name": "t",
        "model": "llama-3.1-8b",
        "hardware": "h100-sxm",
        "cache": {"num_gpu_blocks": 4096, **cache},
        "workload": {"type": "trace", "path": str(trace), "format": fmt},
    }


def _error(capsys, argv, out: Path | None = None) -> str:
    """Run kvsim; assert exit 2, one line, nothing written; return the message after the prefix."""
    if argv[0] == "run" and out is not None:
        argv = [*argv, "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("kvsim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and captured.out == ""
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(".kvsim-staging-*"))
    return err.removeprefix("kvsim: error: ").rstrip("\n")


def _ok(capsys, argv, out: Path) -> dict:
    assert main([*argv, "--out", str(out), "--no-progress", "--json"]) == 0, capsys.readouterr()
    summary = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out)) == sorted(output_module.FILES)
    return summary


# ---- 1. a scenario cannot run code -------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_function_named_as_a_policy_is_refused_before_it_runs(tmp_path, capsys, command):
    """The issue's case: `os:system` was called with the scenario's parameters (a shell
    command). It is refused as not a class, by validate as by run, and nothing runs."""
    marker = tmp_path / "X"
    s = _write(tmp_path, _doc())
    setting = f'cache.eviction={{type: "os:system", command: "id > {marker}"}}'
    err = _error(capsys, [command, str(s), "--set", setting], tmp_path / "out")
    assert err == f"{s}: cache.eviction: eviction policy 'os:system' is not a class"
    assert not marker.exists()


@pytest.mark.parametrize(
    "family, path, why",
    [
        ("routing", "..", "routing: routing policy '..' is not a valid import path"),
        ("routing", "builtins:int", "routing: routing policy 'builtins:int' does not implement"),
        ("cache.eviction", "collections:OrderedDict", "cache.eviction: eviction policy "
         "'collections:OrderedDict' does not implement the eviction interface"),
        ("routing", "kvsim.simulator.policies.eviction:LRU", "routing: routing policy "
         "'kvsim.simulator.policies.eviction:LRU' does not implement the routing interface"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["run", "validate"])
def test_objects_that_are_not_policies_of_the_family(tmp_path, capsys, command, family, path, why):
    s = _write(tmp_path, _doc())
    err = _error(capsys, [command, str(s), "--set", f"{family}={path}"], tmp_path / "out")
    assert err.startswith(f"{s}: {why}"), err


POLICY_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")


class Evict:
    def __init__(self, context, p=0.5):
        if not 0 < p < 1:
            raise ValueError(f"p must be in (0, 1), not {{p}}")

    def key(self, node):
        return (node.last_access_ns, -node.depth)
"""


def _policy_module(folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    marker = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(POLICY_MODULE.format(marker=str(marker)))
    return marker


def test_a_module_in_the_current_folder_is_not_imported_unless_named(tmp_path, capsys, monkeypatch):
    """A scenario naming `mod:Class` must not import a mod.py that lies in the current folder
    (python -m and the interactive interpreter put it first on sys.path); --policy-path names a
    folder explicitly, and then the class is used."""
    here = tmp_path / "here"
    marker = _policy_module(here, "kvsim_test_cwd_policy")
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))  # as python -m does (and '' as -c does)
    s = _write(tmp_path, _doc())
    setting = "cache.eviction=kvsim_test_cwd_policy:Evict"
    err = _error(capsys, ["validate", str(s), "--set", setting])
    assert err == (
        f"{s}: cache.eviction: eviction policy 'kvsim_test_cwd_policy:Evict' cannot be imported "
        "from the installed packages (ModuleNotFoundError: No module named "
        "'kvsim_test_cwd_policy'); the current folder is searched only if named: --policy-path ."
    )
    assert not marker.exists()
    summary = _ok(capsys, ["run", str(s), "--set", setting, "--policy-path", str(here)],
                  tmp_path / "out")  # fmt: skip
    assert summary["finished"] == 30 and marker.exists()


def test_validate_builds_the_cluster_as_run_does(tmp_path, capsys):
    """A policy whose constructor refuses its parameter value: validate instantiates the
    policies as run does, so both refuse it, naming the file."""
    folder = tmp_path / "policies"
    _policy_module(folder, "kvsim_test_validate_policy")
    s = _write(tmp_path, _doc())
    args = ["--set", "cache.eviction={type: kvsim_test_validate_policy:Evict, p: 2}",
            "--policy-path", str(folder)]  # fmt: skip
    expected = (
        f"{s}: cache.eviction: eviction policy 'kvsim_test_validate_policy:Evict': p must be "
        "in (0, 1), not 2"
    )
    assert _error(capsys, ["validate", str(s), *args]) == expected
    assert _error(capsys, ["run", str(s), *args], tmp_path / "out") == expected


def test_validate_reads_the_first_requests_as_run_does(tmp_path, capsys):
    rows = [{"arrival_s": i, "prompt_tokens": 100, "output_tokens": 5} for i in range(3)]
    rows.append({"arrival_s": 4, "prompt_tokens": 100, "output_tokens": 5, "unit_tokens": 24,
                 "blocks": [1, 2, 3, 4, 5]})  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    s = _write(tmp_path, _trace_doc(trace))
    expected = (
        f"{trace}: request 3: content unit of 24 tokens is not a multiple of cache.block_size "
        "16; use a block_size that divides it"
    )
    assert _error(capsys, ["validate", str(s)]) == expected
    assert _error(capsys, ["run", str(s)], tmp_path / "out") == expected
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + "{]\n")
    assert _error(capsys, ["validate", str(s)]).startswith(f"{trace}:4: not valid JSON")


def test_bad_policy_parameters_name_the_file_and_the_field(tmp_path, capsys):
    s = _write(tmp_path, _doc())
    err = _error(capsys, ["validate", str(s), "--set", "cache.eviction={type: lru, bogus: 1}"])
    assert err == (
        f"{s}: cache.eviction: lru: bad parameters {{'bogus': 1}} (got an unexpected keyword "
        "argument 'bogus')"
    )
    err = _error(capsys, ["validate", str(s), "--set", "routing={type: round_robin, w: 2}"])
    assert err == (
        f"{s}: routing: round_robin: bad parameters {{'w': 2}} (got an unexpected keyword "
        "argument 'w')"
    )


def test_python_m_does_not_import_modules_from_the_current_folder(tmp_path):
    """`python -m kvsim.simulator.cli` from a folder holding a simpy.py: kvsim uses the real
    simpy; the folder's file is never executed."""
    marker = tmp_path / "MARKER"
    (tmp_path / "simpy.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    s = _write(tmp_path, _doc())
    p = subprocess.run(
        [sys.executable, "-m", "kvsim.simulator.cli", "validate", str(s)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "valid" in p.stdout and not marker.exists()


# ---- 2. the scenario name is a name -------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", "../x", "/any/dir", "a\x00b", "x" * 300, ".hidden", "a/b"])
def test_a_name_that_is_a_path_is_refused(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    s = _write(tmp_path, _doc(name=name))
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))
    err = _error(capsys, ["run", str(s), "--no-progress"])
    assert err.startswith(f"{s}: name: ")
    assert len(err) < 400
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))) == before


def test_a_name_becomes_a_folder_under_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _write(tmp_path, _doc(name="chat run-1 (lfu)"))
    assert main(["run", str(s), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "runs" / "chat run-1 (lfu)")) == sorted(output_module.FILES)


# ---- 3. results are never lost ------------------------------------------------------------------
def test_out_naming_a_file_fails_before_the_run(tmp_path, capsys, monkeypatch):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    monkeypatch.setattr("kvsim.simulator.cluster.Cluster.run", _must_not_run)
    s = _write(tmp_path, _doc())
    err = _error(capsys, ["run", str(s), "--out", str(target)])
    assert err == f"--out {target}: exists and is not a folder"
    assert target.read_text() == "keep me"


def _must_not_run(*args, **kwargs):
    raise AssertionError("the run started although its results could not be written")


def test_an_unwritable_destination_fails_before_the_run(tmp_path, capsys, monkeypatch):
    """A read-only file system (as root, permissions cannot make one: the error is injected
    where the staging folder is created)."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(output_module.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr("kvsim.simulator.cluster.Cluster.run", _must_not_run)
    s = _write(tmp_path, _doc())
    out = tmp_path / "a" / "b"
    err = _error(capsys, ["run", str(s)], out)
    assert err == f"--out {out}: cannot create the results folder (Read-only file system)"
    assert not (tmp_path / "a").exists()  # the parents it made are gone too


def test_a_full_disk_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = output_module.write_files

    def full(folder, scenario, results, plotlyjs):
        (folder / "summary.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_module, "write_files", full)
    s = _write(tmp_path, _doc())
    out = tmp_path / "out"
    err = _error(capsys, ["run", str(s)], out)
    assert err == (
        f"--out {out}: cannot write the results; nothing was written (No space left on device)"
    )
    monkeypatch.setattr(output_module, "write_files", real)


def test_a_full_temp_folder_is_one_line(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("kvsim.simulator.recorder.tempfile.TemporaryFile", full)
    s = _write(tmp_path, _doc())
    err = _error(capsys, ["run", str(s)], tmp_path / "out")
    assert err.startswith(
        "writing the run's temporary files failed (No space left on device); free space in "
    )
    assert err.endswith(" or point TMPDIR elsewhere")


@pytest.mark.parametrize("exists", [False, True])
def test_every_rename_stays_inside_the_destination_file_system(tmp_path, capsys, monkeypatch,
                                                               exists):  # fmt: skip
    """An existing --out may be a mount point: staging beside it would be on another file
    system ("Invalid cross-device link"). Staged inside it, each file moves within it; a new
    --out is staged beside itself, under the parent it is created in, and renamed at once."""
    moves = []
    real_replace, real_rename = os.replace, os.rename

    def replace(src, dst):
        moves.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    def rename(src, dst):
        moves.append(("rename", Path(src), Path(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(output_module.os, "replace", replace)
    monkeypatch.setattr(output_module.os, "rename", rename)
    out = tmp_path / "volume"
    if exists:
        out.mkdir()
        (out / "unrelated.txt").write_text("stays")
    s = _write(tmp_path, _doc())
    _ok(capsys, ["run", str(s)], out) if not exists else None
    if exists:
        assert main(["run", str(s), "--out", str(out), "--no-progress"]) == 0
        assert sorted(os.listdir(out)) == sorted([*output_module.FILES, "unrelated.txt"])
        assert [(k, src.parent.parent, src.name, dst) for k, src, dst in moves] == [
            ("replace", out, name, out / name) for name in output_module.FILES
        ]
        assert all(src.parent.name.startswith(".kvsim-staging-") for _, src, _ in moves)
    else:
        assert [(k, src.parent, dst) for k, src, dst in moves] == [("rename", tmp_path, out)]
        assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])  # fmt: skip
def test_a_signal_while_writing_leaves_no_folder(tmp_path, capsys, monkeypatch, signum, code,
                                                 word):  # fmt: skip
    """SIGTERM behaves as SIGINT: the run unwinds, the staging folder goes (the issue saw a
    hidden `.out.*` folder left behind)."""
    real = output_module.write_files

    def interrupted(folder, scenario, results, plotlyjs):
        (folder / "summary.json").write_text("{}")
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the handler raises here
        raise AssertionError("the signal was not delivered")

    monkeypatch.setattr(output_module, "write_files", interrupted)
    # A process started in the background by a shell ignores SIGINT; a user's terminal does not.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    s = _write(tmp_path, _doc())
    out = tmp_path / "out"
    try:
        status = main(["run", str(s), "--out", str(out), "--no-progress"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert status == code
    assert capsys.readouterr().err == f"kvsim: {word}; no results written\n"
    assert os.listdir(tmp_path) == ["s.yaml"]
    monkeypatch.setattr(output_module, "write_files", real)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM)
    )


def test_a_signal_while_moving_files_is_held_until_they_are_in(tmp_path, capsys, monkeypatch):
    real_replace = os.replace
    count = []

    def replace(src, dst):
        if not count:
            os.kill(os.getpid(), signal.SIGTERM)  # held: delivered after the last move
        count.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(output_module.os, "replace", replace)
    out = tmp_path / "out"
    out.mkdir()
    s = _write(tmp_path, _doc())
    assert main(["run", str(s), "--out", str(out), "--no-progress"]) == 143
    assert capsys.readouterr().err == f"kvsim: terminated; results written to {out}/\n"
    assert len(count) == len(output_module.FILES)
    assert sorted(os.listdir(out)) == sorted(output_module.FILES)


def test_sigterm_in_a_real_process_leaves_nothing(tmp_path):
    doc = _doc()
    doc["workload"]["requests"] = 200_000
    s = _write(tmp_path, doc)
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-m", "kvsim.simulator.cli", "run", str(s), "--out", str(out),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".kvsim-staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143
    assert err == "kvsim: terminated; no results written\n"
    assert os.listdir(tmp_path) == ["s.yaml"]


# ---- 4. a request that just fits -----------------------------------------------------------------
def test_the_one_row_reproduction_runs(tmp_path, capsys):
    trace = write_kvsim_trace(
        tmp_path / "t.jsonl",
        [{"arrival_s": 0, "prompt_tokens": 100, "output_tokens": 18, "blocks": [1]}],
    )
    s = _write(tmp_path, _trace_doc(trace, num_gpu_blocks=8))
    summary = _ok(capsys, ["run", str(s)], tmp_path / "out")
    assert (summary["finished"], summary["dropped"]) == (1, 0)


def test_mooncake_on_llama_70b_tp2_runs_to_completion(tmp_path):
    """The shipped Mooncake scenario with --set model=llama-3.1-70b --set
    cluster.tensor_parallel=2 ended with requests in flight (all results lost)."""
    shared_trace("mooncake_conversation.jsonl")
    s = load_scenario(
        ROOT / "scenarios" / "mooncake_conversation.yaml",
        ["model=llama-3.1-70b", "cluster.tensor_parallel=2"],
    )
    res = simulate(s)
    # 926 blocks of 16 tokens per replica (vLLM v0.11's rule, pinned in test_latency); a request
    # needs ceil((prompt + output − 1) / 16) blocks, so these are dropped.
    capacity = res.summary["kv_blocks_per_replica"]
    assert capacity == 926
    too_big = 0
    for line in shared_trace("mooncake_conversation.jsonl").read_text().splitlines():
        row = json.loads(line)
        total = row["input_length"] + max(1, row["output_length"])
        too_big += -(-(total - 1) // 16) > capacity
    assert res.summary["requests"] == 12031
    assert res.summary["drop_reasons"] == {
        f"needs more KV blocks than a replica has ({capacity})": too_big
    }
    assert res.summary["finished"] == 12031 - too_big


# ---- 5. YAML alias bombs, depth, size -----------------------------------------------------------
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    """1.2 KB expanding to 9⁹ ≈ 387 million values: the issue saw 97 s, 6.2 GB, MemoryError."""
    s = _write(tmp_path, BOMB)
    assert len(BOMB) < 1200
    t0 = time.monotonic()
    err = _error(capsys, ["run", str(s)], tmp_path / "out")
    assert time.monotonic() - t0 < 2
    assert err == f"{s}:1: not valid YAML (more than 100,000 values once its aliases are expanded)"


@pytest.mark.parametrize("command", ["run", "validate"])
def test_an_alias_bomb_in_policy_parameters(tmp_path, capsys, command):
    """Inside policy parameters it passed validate and hung run."""
    params = "".join(
        f"p{i}: &p{i} [{','.join([f'*p{i - 1}'] * 10 if i else ['1'] * 10)}]\n    "
        for i in range(6)
    )
    text = QUICKSTART.read_text().replace(
        "  eviction: lru", f"  eviction:\n    type: lru\n    {params}"
    )
    s = _write(tmp_path, text)
    t0 = time.monotonic()
    err = _error(capsys, [command, str(s)], tmp_path / "out")
    assert time.monotonic() - t0 < 2
    assert err.endswith("not valid YAML (more than 100,000 values once its aliases are expanded)")
    setting = "cache.eviction={type: lru, a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"  # noqa: E501
    err = _error(capsys, [command, str(_write(tmp_path, _doc())), "--set", setting])
    assert err == (
        "--set cache.eviction: not valid YAML (more than 100,000 values once its aliases are "
        "expanded)"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(
            "a: " + "[" * 1000 + "]" * 1000 + "\n",
            ":1: not valid YAML (nested more than 64 levels",
            id="deep",
        ),
        pytest.param("a: &r [1, *r]\n", ":1: not valid YAML (more than 100,000 values", id="cycle"),
        pytest.param(
            "seed: 1\nname: x\nseed: 2\n",
            ":3: not valid YAML (key 'seed' is given twice)",
            id="duplicate",
        ),
        pytest.param(
            "n: 1" + "0" * 5000 + "\n",
            ":1: not valid YAML (a value cannot be read (Exceeds",
            id="long-int",
        ),
        pytest.param(
            "!!python/object/apply:os.system ['true']\n",
            ":1: not valid YAML (could not determine",
            id="python-tag",
        ),
    ],
)
def test_yaml_bounds(tmp_path, capsys, text, message):
    s = _write(tmp_path, text)
    err = _error(capsys, ["validate", str(s)])
    assert err.startswith(f"{s}{message}"), err


def test_a_scenario_larger_than_a_megabyte_is_refused(tmp_path, capsys):
    s = _write(tmp_path, "description: " + "x" * (1 << 20) + "\n")
    err = _error(capsys, ["validate", str(s)])
    assert err == f"{s}: a scenario file is at most 1,048,576 bytes; this one is larger"


def test_yaml_1_2_numbers_are_numbers(tmp_path, capsys):
    """YAML 1.1 reads `1e3` as a string, which strict number fields would refuse."""
    s = _write(tmp_path, _doc())
    assert _error(capsys, ["validate", str(s), "--set", "workload.rate=1e-300"]) == (
        f"{s}: workload.synthetic.rate: 1e-300 is not allowed: must be at least 1e-06 (a request "
        "every 11.6 days)"
    )
    assert main(["validate", str(s), "--set", "workload.rate=2e1"]) == 0


# ---- 6. tracebacks that are now one line ---------------------------------------------------------
def test_a_latin_1_scenario(tmp_path, capsys):
    text = QUICKSTART.read_text().replace("description: 2000", "description: caf\xe9 2000")
    s = _write(tmp_path, text.encode("latin-1"))
    line = 1 + text[: text.index("caf\xe9")].count("\n")
    err = _error(capsys, ["validate", str(s)])
    assert err == f"{s}:{line}: not UTF-8 text (byte 0xe9); save the scenario file as UTF-8"


ROWS = [
    {"arrival_s": 0.25 * i, "prompt_tokens": 300 + 20 * i, "output_tokens": 4 + i,
     "blocks": [1, 2 + i], "unit_tokens": 256} for i in range(8)
]  # fmt: skip


@pytest.mark.parametrize(
    "name, pack",
    [
        ("t.jsonl.gz", gzip.compress),
        ("t.jsonl.bz2", bz2.compress),
        ("t.jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("t.jsonl", gzip.compress),  # told by the magic bytes, not the name
    ],
)
def test_compressed_traces_give_the_plain_traces_results(tmp_path, capsys, name, pack):
    plain = write_kvsim_trace(tmp_path / "plain.jsonl", ROWS)
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / name).write_bytes(pack(plain.read_bytes()))
    a = _ok(capsys, ["run", str(_write(tmp_path, _trace_doc(plain), "a.yaml"))], tmp_path / "a")
    b = _ok(capsys, ["run", str(_write(tmp_path, _trace_doc(packed / name), "b.yaml"))],
            tmp_path / "b")  # fmt: skip
    assert a["finished"] == 8 and b == a
    assert (tmp_path / "a" / "requests.csv").read_bytes() == (
        tmp_path / "b" / "requests.csv"
    ).read_bytes()
    assert main(["trace", "stats", str(packed / name)]) == 0
    assert "requests                               8" in capsys.readouterr().out


def test_zstd_without_its_package_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    trace = tmp_path / "t.jsonl.zst"
    trace.write_bytes(zstandard.ZstdCompressor().compress(b'{"arrival_s": 0}\n'))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard → ImportError
    err = _error(capsys, ["trace", "stats", str(trace)])
    assert err == (
        "reading a Zstandard-compressed trace needs the zstandard package: pip install "
        "'kvsim[traces]' (or decompress it: zstd -d FILE)"
    )


@pytest.mark.parametrize(
    "data, message",
    [
        ("".join(json.dumps(r) + "\n" for r in ROWS).encode("utf-16"),
         ":1: the file is UTF-16 text; save it as UTF-8"),
        (b'{"arrival_s": 0, "prompt_tokens": 10, "output_tokens": 1}\n{"x": "\xff"}\n',
         ":2: not UTF-8 text (byte 0xff at column 8)"),
        (gzip.compress(b'{"arrival_s": 0, "prompt_tokens": 10, "output_tokens": 1}\n' * 50)[:40],
         ":1: cannot read the gzip data (Compressed file ended before the end-of-stream marker "
         "was reached)"),
        (b"x" * (1 << 20) + b"xx\n", ":1: line longer than 1,048,576 bytes; is this a trace"),
        (b"", ": no requests in the trace"),
        (b"\n\n", ": no requests in the trace"),
    ],
)  # fmt: skip
def test_unreadable_traces(tmp_path, capsys, data, message):
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(data)
    s = _write(tmp_path, _trace_doc(trace))
    assert _error(capsys, ["run", str(s)], tmp_path / "out").startswith(f"{trace}{message}")


@pytest.mark.parametrize(
    "body, message",
    [
        ('ContextTokens,TIMESTAMP,GeneratedTokens\n",120,7\n', ":2: 1 cells; the header has 3"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04.0,10\n",
         ":2: 2 cells; the header has 3"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04.0,10,1,9\n",
         ":2: 4 cells; the header has 3"),
    ],
)  # fmt: skip
def test_csv_rows_of_the_wrong_width(tmp_path, capsys, body, message):
    """The first case was found by the fuzzer: an unclosed quote swallows the rest of the file
    into one cell, and the missing cells used to reach the parser as None."""
    trace = tmp_path / "a.csv"
    trace.write_text(body)
    err = _error(capsys, ["trace", "stats", str(trace), "--format", "azure"])
    assert err.startswith(f"{trace}{message}"), err


def test_a_csv_cell_over_the_field_limit(tmp_path, capsys):
    trace = tmp_path / "a.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04.0,10,1\n"
        '2023-11-16 18:17:05.0,"' + "1" * 200_000 + '",1\n'
    )
    s = _write(tmp_path, _trace_doc(trace, "azure"))
    err = _error(capsys, ["run", str(s)], tmp_path / "out")
    assert err == f"{trace}:3: not valid CSV (field larger than field limit (131072))"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"arrival_s": 1e20}, "timestamp is 1e+20 s after the first row's; a trace spans at "
         "most 1e+09 s (check its unit)"),
        ({"prompt_tokens": "Infinity"}, "field 'prompt_tokens' is 'Infinity'; expected an "
         "integer from 1 to 100,000,000"),
        ({"prompt_tokens": 1e21}, "field 'prompt_tokens' is 1e+21; expected an integer from 1"),
        ({"output_tokens": 12.5}, "field 'output_tokens' is 12.5; expected an integer from 1"),
        ({"output_tokens": True}, "field 'output_tokens' is True; expected an integer from 1"),
        ({"blocks": [1, True]}, "field 'blocks' must be a list of 64-bit integers"),
        ({"blocks": [2**64]}, "field 'blocks' must be a list of 64-bit integers"),
        ({"session": [1]}, "field 'session' is [1]; expected an integer"),
    ],
)  # fmt: skip
def test_absurd_numbers_in_a_trace(tmp_path, capsys, row, message):
    rows = [{"arrival_s": 0, "prompt_tokens": 100, "output_tokens": 5},
            {"arrival_s": 1, "prompt_tokens": 100, "output_tokens": 5, **row}]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    s = _write(tmp_path, _trace_doc(trace))
    err = _error(capsys, ["run", str(s)], tmp_path / "out")
    assert err.startswith(f"{trace}:2: {message}"), err


def test_json_infinity_and_overflowing_numbers_in_a_trace(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    for literal in ("Infinity", "1e400", "NaN"):
        trace.write_text(f'{{"arrival_s": 0, "prompt_tokens": {literal}, "output_tokens": 5}}\n')
        s = _write(tmp_path, _trace_doc(trace))
        err = _error(capsys, ["run", str(s)], tmp_path / "out")
        assert err.startswith(f"{trace}:1: field 'prompt_tokens' is "), err
    trace.write_text('{"arrival_s": 0, "prompt_tokens": 512.0, "output_tokens": 5}\n')
    assert _ok(capsys, ["run", str(s)], tmp_path / "ok")["finished"] == 1  # exact: accepted


def test_arrivals_beyond_the_simulated_clock(tmp_path, capsys):
    """Within the trace's span limit, but a rate_scale of 1e-6 stretches it past int64 ns."""
    rows = [{"arrival_s": 0, "prompt_tokens": 100, "output_tokens": 5},
            {"arrival_s": 9e8, "prompt_tokens": 100, "output_tokens": 5}]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = _trace_doc(trace)
    doc["workload"]["rate_scale"] = 1e-6
    err = _error(capsys, ["run", str(_write(tmp_path, doc))], tmp_path / "out")
    assert err == (
        f"{trace}: request 1 arrives at 9e+14 s (after workload.rate_scale); simulated time ends "
        "at 4.61e+09 s"
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("seed=-1", "seed: -1 is not allowed: Input should be greater than or equal to 0"),
        ("workload.rate_scale=1e-300", "workload.synthetic.rate_scale: 1e-300 is not allowed: "
         "Input should be greater than or equal to 0.000001"),
        ("workload.cv=.inf", "workload.synthetic.cv: inf is not allowed: Input should be a finite "
         "number"),
        ("workload.rate_scale=.inf", "workload.synthetic.rate_scale: inf is not allowed: Input "
         "should be a finite number"),
        ("slo.ttft_s=.inf", "slo.ttft_s: inf is not allowed: Input should be a finite number"),
        ("slo.tpot_s=.nan", "slo.tpot_s: nan is not allowed: Input should be a finite number"),
        ("cache.block_size=true", "cache.block_size: True is not allowed: Input should be a valid "
         "integer"),
        ("cluster.replicas=2.0", "cluster.replicas: 2.0 is not allowed: Input should be a valid "
         "integer"),
        ("cluster.tensor_parallel=true", "cluster.tensor_parallel: True is not allowed: must be "
         "the integer 1, 2, 4 or 8"),
        ("cache.enable_prefix_caching=1", "cache.enable_prefix_caching: 1 is not allowed: Input "
         "should be a valid boolean"),
        ("workload.prompt_tokens={type: lognormal, median: 100000, max: 100}",
         "workload.synthetic.prompt_tokens.lognormal: {'type': 'lognormal', 'median': 100000, "
         "'max': 100} is not allowed: median (100000) must lie within min (1) and max (100)"),
        ("workload.prompt_tokens={type: fixed, value: 1e21}", "workload.synthetic.prompt_tokens."
         "fixed.value: 1e+21 is not allowed: Input should be a valid integer"),
        ("scheduler.max_waiting=0", "scheduler.max_waiting: 0 is not allowed: Input should be "
         "greater than or equal to 1"),
        # Found by the fuzzer: every prompt longer than 256 tokens waited for ever, and the run
        # ended with requests in flight (a RuntimeError, all results lost).
        ("scheduler={enable_chunked_prefill: false, chunk_tokens: 256}", "scheduler: {'enable_"
         "chunked_prefill': False, 'chunk_tokens': 256} is not allowed: chunk_tokens (256) caps "
         "prefill chunks; with enable_chunked_prefill: false a prompt is one chunk: leave "
         "chunk_tokens unset"),
    ],
)  # fmt: skip
def test_strict_and_finite_scenario_values(tmp_path, capsys, setting, message):
    s = _write(tmp_path, _doc())
    assert _error(capsys, ["run", str(s), "--set", setting], tmp_path / "out") == f"{s}: {message}"


HF_LLAMA = {
    "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
    "max_position_embeddings": 131072,
}  # fmt: skip


@pytest.mark.parametrize("heads", ["abc", 0, None, -4, 1.5, True])
def test_bad_hugging_face_config_values(tmp_path, capsys, heads):
    (tmp_path / "config.json").write_text(json.dumps({**HF_LLAMA, "num_attention_heads": heads}))
    s = _write(tmp_path, _doc(model="config.json"))
    for command in ("validate", "run"):
        err = _error(capsys, [command, str(s)], tmp_path / "out")
        assert err.startswith(f"{s}: model: {tmp_path / 'config.json'}: "), err
        assert "num_attention_heads" in err


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"ops": [1, 2]}, "ops"),
        ({"ops": {"gemm": {"params": "x"}}}, "ops.gemm"),
        ({"kvsim_profile": "one"}, "kvsim_profile"),
        ({"quality": {"accepted": [[]]}}, "quality.accepted is [[]]"),  # found by the fuzzer
    ],
)
def test_badly_structured_profiles(tmp_path, capsys, change, fragment):
    profile = {
        "kvsim_profile": 1,
        "device": {"device": "hand-written", "timer": "cuda_events"},
        "ops": {},
        "not_measured": {"step_overhead": "host"},
        **change,
    }
    _write(tmp_path, profile, "p.yaml")
    s = _write(
        tmp_path, _doc(latency={"type": "profile", "path": "p.yaml", "fallback": "roofline"})
    )
    for command in ("validate", "run"):
        err = _error(capsys, [command, str(s)], tmp_path / "out")
        assert err.startswith(f"{tmp_path / 'p.yaml'}: "), err
        assert fragment in err


def test_absurdly_slow_prices_stop_at_the_end_of_the_clock(tmp_path, capsys):
    """Found by the fuzzer: a profile pricing a FLOP at one second put an iteration past int64
    nanoseconds, and writing the request record failed ("argument out of range")."""
    profile = {
        "kvsim_profile": 1,
        "device": {"device": "hand-written", "timer": "cuda_events"},
        "ops": {
            "gemm": {
                "params": {"launch_s": 5e-6, "s_per_flop": 1, "s_per_byte": 0, "extra": {}},
                "ranges": {},
                "heldout_mape": 0.01,
                "heldout_max_error": 0.02,
            }
        },
        "not_measured": {"step_overhead": "host", "allreduce": "several GPUs"},
    }
    _write(tmp_path, profile, "p.yaml")
    s = _write(
        tmp_path, _doc(latency={"type": "profile", "path": "p.yaml", "fallback": "roofline"})
    )
    err = _error(capsys, ["run", str(s)], tmp_path / "out")
    assert err.startswith("the simulated clock would pass 4.61e+09 s (an event at "), err
    assert err.endswith(" s): are the latency model's prices absurdly slow?")


def test_usage_mistakes_are_one_line_too(capsys):
    assert _error(capsys, ["run"]) == (
        "kvsim run: the following arguments are required: scenario (see kvsim run --help)"
    )
    assert _error(capsys, ["validate", "x.yaml", "--set"]) == (
        "kvsim validate: argument --set: expected one argument (see kvsim validate --help)"
    )
    assert _error(capsys, ["validate", "x.yaml", "--policy-path", "/nonexistent"]) == (
        "--policy-path '/nonexistent': not a folder"
    )


# ---- 7. wrong but silent ------------------------------------------------------------------------
def test_long_values_are_echoed_short(tmp_path, capsys):
    """A 100 KB value used to be echoed whole."""
    s = _write(tmp_path, _doc())
    for setting in ("hardware=" + "h" * 100_000, "cluster.replicas=" + "x" * 100_000,
                    "x" * 100_000 + "=1", "model=" + "m" * 100_000):  # fmt: skip
        err = _error(capsys, ["validate", str(s), "--set", setting])
        assert len(err) < 600, (len(err), err[:300])
