"""The compiled engine core (mypyc) and its Python source: which one runs, and that both give the
same results to the byte."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvsim.simulator as simulator
from kvsim.simulator import _native

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def meta_path(monkeypatch):
    """sys.meta_path restored after the test (``choose`` may insert its finder)."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv(_native.ENV_PURE, raising=False)
    return sys.meta_path


@pytest.fixture
def pkg(tmp_path) -> Path:
    """A package folder named as the real one (the digest names files under ``simulator/``)."""
    (tmp_path / "simulator").mkdir()
    return tmp_path / "simulator"


def _fake_build(root: Path, compiled: tuple[str, ...] = _native.MODULES, group: bool = True):
    """A package folder with every engine module's source, extensions for ``compiled`` (bytes
    that are no shared object: ``choose`` only looks at names), the group library and, for a
    complete build, the build's record of its sources."""
    for m in _native.MODULES:
        src = root / f"{m}.py"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"NAME = {m!r}\n")
        if m in compiled:
            src.with_name(src.stem + SUFFIX).write_bytes(b"not an ELF file")
    if group:
        (root / f"{_native.GROUP_FILE}{SUFFIX}").write_bytes(b"not an ELF file")
    if compiled == _native.MODULES and group:
        (root / _native.DIGEST_FILE).write_text(_native.record(root))


def test_the_compiled_core_runs_when_its_source_is_what_was_compiled(pkg, meta_path, capsys):
    _fake_build(pkg)
    before = list(meta_path)
    assert _native.choose(pkg, "fakepkg") == "compiled"
    assert meta_path == before and capsys.readouterr().err == ""


@pytest.mark.parametrize("edited", _native.MODULES)
def test_an_edited_source_runs_as_python_all_of_it(pkg, meta_path, capsys, edited):
    _fake_build(pkg)
    (pkg / f"{edited}.py").write_text("NAME = 'edited'\n")
    assert _native.choose(pkg, "fakepkg") == "python"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source changed since it was compiled" in err
    finder = meta_path[0]
    for m in _native.MODULES:  # every module, not only the edited one
        spec = finder.find_spec(f"fakepkg.{m.replace('/', '.')}")
        assert spec.origin == str(pkg / f"{m}.py")
    assert finder.find_spec("fakepkg.cluster") is None  # not an engine module: not its business


def test_an_incomplete_build_runs_as_python(pkg, meta_path, capsys):
    _fake_build(pkg, compiled=_native.MODULES[:-1])
    assert _native.choose(pkg, "fakepkg") == "python"
    assert "incomplete" in capsys.readouterr().err
    assert isinstance(meta_path[0], _native._SourceFinder)


def test_a_missing_digest_runs_as_python(pkg, meta_path, capsys):
    _fake_build(pkg)
    (pkg / _native.DIGEST_FILE).unlink()
    assert _native.choose(pkg, "fakepkg") == "python"
    assert "no record of its sources" in capsys.readouterr().err


def test_kvsim_pure_python_asks_for_the_source_quietly(pkg, meta_path, capsys, monkeypatch):
    _fake_build(pkg)
    monkeypatch.setenv(_native.ENV_PURE, "1")
    assert _native.choose(pkg, "fakepkg") == "python"
    assert capsys.readouterr().err == "" and isinstance(meta_path[0], _native._SourceFinder)
    monkeypatch.setenv(_native.ENV_PURE, "0")  # "0" is not a request
    assert _native.choose(pkg, "fakepkg2") == "compiled"


def test_nothing_compiled_is_python_without_a_word(pkg, meta_path, capsys):
    _fake_build(pkg, compiled=())
    before = list(meta_path)
    assert _native.choose(pkg, "fakepkg") == "python"
    assert meta_path == before and capsys.readouterr().err == ""


def test_the_finder_loads_the_source_beside_an_extension_python_would_prefer(tmp_path, meta_path):
    pkg = tmp_path / "kvsim_native_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 41 + 1\n")
    (pkg / f"mod{SUFFIX}").write_bytes(b"not an ELF file")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ImportError):  # Python's own choice: the (broken) extension
            importlib.import_module("kvsim_native_probe.mod")
        sys.modules.pop("kvsim_native_probe.mod", None)
        meta_path.insert(0, _native._SourceFinder({"kvsim_native_probe.mod": pkg / "mod.py"}))
        assert importlib.import_module("kvsim_native_probe.mod").X == 42
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("kvsim_native_probe.mod", "kvsim_native_probe"):
            sys.modules.pop(name, None)


def test_compiled_and_python_engines_write_the_same_bytes(tmp_path):
    """The README's main job, once as this install runs it and once as Python source."""
    outputs = ("summary.json", "requests.csv", "timeseries.csv", "report.html")
    engines = {}
    for name, pure in (("default", None), ("python", "1")):
        env = {k: v for k, v in os.environ.items() if k != _native.ENV_PURE}
        if pure:
            env[_native.ENV_PURE] = pure
        code = (
            "import sys, kvsim.simulator as s; from kvsim.simulator.cli import main; "
            "print('ENGINE', s.ENGINE, file=sys.stderr); sys.exit(main())"
        )
        cmd = [sys.executable, "-c", code, "run", str(ROOT / "scenarios" / "quickstart.yaml")]
        cmd += ["--out", str(tmp_path / name), "--no-progress"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        engines[name] = next(x for x in p.stderr.splitlines() if x.startswith("ENGINE "))[7:]
    compiled = _native.diagnose(Path(simulator.__file__).parent) is None
    assert engines == {"default": "compiled" if compiled else "python", "python": "python"}
    for f in outputs:
        assert (tmp_path / "default" / f).read_bytes() == (tmp_path / "python" / f).read_bytes(), f


def test_an_install_with_the_engine_compiled_runs_it():
    """Where the build left a complete engine for these sources, this process runs it; CI
    (``KVSIM_REQUIRE_COMPILED=1``, `.ci/run`) must have one: a stale record or a broken finder
    would otherwise quietly run the source."""
    package = Path(simulator.__file__).parent
    reason = _native.diagnose(package)
    if os.environ.get("KVSIM_REQUIRE_COMPILED", "") not in ("", "0"):
        assert reason is None, reason
    if os.environ.get(_native.ENV_PURE, "") not in ("", "0"):
        assert simulator.ENGINE == "python"  # asked for
    elif reason is None:
        assert simulator.ENGINE == "compiled"
        scheduler = importlib.import_module("kvsim.simulator.scheduler")
        assert not scheduler.__file__.endswith(".py")
    else:
        assert simulator.ENGINE == "python"


def test_a_module_an_older_build_compiled_runs_as_source_too(pkg, meta_path, capsys):
    """A build that compiled ``pool`` as well, then ``MODULES`` without it: its extension would
    ask the new engine library for a module it does not hold."""
    _fake_build(pkg)
    (pkg / "pool.py").write_text("NAME = 'pool'\n")
    (pkg / f"pool{SUFFIX}").write_bytes(b"not an ELF file")
    (pkg / "notes.py").write_text("")  # no extension beside it: Python finds it itself
    (pkg / "cache" / "kv_cache.py").write_text("NAME = 'edited'\n")
    assert _native.choose(pkg, "fakepkg") == "python"
    finder = meta_path[0]
    assert finder.find_spec("fakepkg.pool").origin == str(pkg / "pool.py")
    assert finder.find_spec("fakepkg.notes") is None
    assert _native.extensions(pkg) == sorted(pkg.rglob(f"*{SUFFIX}"))
    assert len(_native.extensions(pkg)) == len(_native.MODULES) + 2  # + pool, group


def test_a_missing_engine_library_is_an_incomplete_build(pkg, meta_path, capsys):
    _fake_build(pkg, group=False)
    assert _native.choose(pkg, "fakepkg") == "python"
    assert "incomplete" in capsys.readouterr().err


def test_a_build_for_another_python_says_so(pkg, meta_path, capsys):
    _fake_build(pkg)
    for ext in _native.extensions(pkg):
        ext.unlink()
    assert _native.choose(pkg, "fakepkg") == "python"
    assert "not for this Python" in capsys.readouterr().err


def test_an_edit_to_a_module_the_engine_imports_runs_as_python(pkg, meta_path, capsys):
    """mypyc compiles against the types of every kvsim module the engine imports: an edit there
    may break what the compiled code trusts, so it counts as an edit of the engine."""
    (pkg / "errors.py").write_text("class KvsimError(Exception): ...\n")
    (pkg / "report.py").write_text("")
    _fake_build(pkg)
    (pkg / "scheduler.py").write_text("from .errors import KvsimError\n")
    (pkg / _native.DIGEST_FILE).write_text(_native.record(pkg))
    assert "simulator/errors.py" in _native.record(pkg).split("\n")
    (pkg / "report.py").write_text("X = 1\n")  # not imported by the engine: still compiled
    assert _native.choose(pkg, "fakepkg") == "compiled"
    (pkg / "errors.py").write_text("class KvsimError(ValueError): ...\n")
    assert _native.choose(pkg, "fakepkg2") == "python"
    assert "source changed" in capsys.readouterr().err


def test_the_engine_is_compiled_against_what_it_imports():
    files = _native.compiled_against(Path(simulator.__file__).parent)
    for m in _native.MODULES:
        assert f"simulator/{m}.py" in files
    for f in ("simulator/latency/ops.py", "simulator/latency/roofline.py", "simulator/errors.py",
              "simulator/cache/__init__.py", "simulator/__init__.py"):  # fmt: skip
        assert f in files
    assert "simulator/report.py" not in files and "simulator/cli.py" not in files
