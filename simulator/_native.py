"""The engine core compiled with mypyc, or its Python source: which one a process runs.

The simulation loop's modules (``MODULES``: scheduler, replica, pricer, KV cache, prefix tree, usage
meter, sampled series, request recorder) are plain typed Python, compiled to C extensions by
``setup.py`` at install time when mypyc and a C compiler are there (about 2.5x on the loop, same
results to the byte); elsewhere the build skips them and Python runs the source. Python prefers an
extension module to the ``.py`` beside it, so an extension built from older source would silently
shadow an edit: the build records a digest of the sources it compiled against (``DIGEST_FILE``: the
engine's modules and every kvsim module they import), and :func:`choose` runs the source, all of it,
when that digest no longer matches, when the build is incomplete or not for this Python (one line on
stderr says so) or when ``KVSIM_PURE_PYTHON=1``.
All or nothing: compiled code trusts the layout of the compiled classes it calls.

This module is read by ``setup.py`` with ``runpy`` too, so it imports nothing from the package.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import sys
from pathlib import Path

MODULES = (
    "scheduler",
    "replica",
    "latency/pricer",
    "cache/kv_cache",
    "cache/prefix_tree",
    "usage",
    "timeseries",
    "recorder",
)
"""The compiled modules, as paths under ``simulator/`` without ``.py``."""
GROUP = "kvsim.simulator._core"
"""mypyc's group name: its shared library is ``<GROUP>__mypyc``."""
GROUP_FILE = "_core__mypyc"
"""That library's file name in the package, without the extension suffix."""
DIGEST_FILE = "_native.digest"
ENV_PURE = "KVSIM_PURE_PYTHON"


def compiled_against(package_dir: Path) -> list[str]:
    """The sources mypyc reads to compile ``MODULES``: those modules and every kvsim module they
    import, transitively (mypy follows them for their types, and the compiled code trusts those
    types), with the packages on the way; paths relative to the ``kvsim`` folder. Build time only.
    """
    import ast

    root = package_dir.parent  # the kvsim folder: simulator/, traces/

    def source(module: str) -> Path | None:  # "simulator.cache.kv_cache" -> its file
        base = root.joinpath(*module.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
        return None

    todo = [f"simulator.{m.replace('/', '.')}" for m in MODULES]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        path = source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_bytes())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = package[: len(package) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                name = name.removeprefix("kvsim.")
                if name.split(".")[0] in ("simulator", "traces"):
                    todo.append(name)
    return sorted(str(source(m).relative_to(root)) for m in seen)  # type: ignore[union-attr]


def source_digest(root: Path, files: list[str]) -> str:
    """SHA-256 over ``files`` (paths relative to the kvsim folder ``root``), names and bytes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0")
        h.update((root / f).read_bytes())
    return h.hexdigest()


def record(package_dir: Path) -> str:
    """The digest file's text: the digest, then the files it covers, a line each."""
    files = compiled_against(package_dir)
    return "\n".join([source_digest(package_dir.parent, files), *files]) + "\n"


def _extension(source: Path) -> bool:
    """Whether this interpreter has an extension module beside ``source`` (it would import it)."""
    stem = source.with_suffix("")
    return any(
        stem.with_name(stem.name + s).exists() for s in importlib.machinery.EXTENSION_SUFFIXES
    )


def extensions(package_dir: Path) -> list[Path]:
    """Every extension module under ``package_dir`` this interpreter would import (the package
    has none but what mypyc built: an in-place build removes them first, so a module dropped from
    ``MODULES`` leaves no stale one behind)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's own ABI tag
    return sorted(p for p in package_dir.rglob(f"*{suffix}"))


class _SourceFinder:
    """A meta-path finder that loads the named modules from their ``.py`` files."""

    def __init__(self, sources: dict[str, Path]):
        self.sources = sources

    def find_spec(self, fullname, path=None, target=None):
        source = self.sources.get(fullname)
        if source is None:
            return None
        import importlib.util

        return importlib.util.spec_from_file_location(fullname, source)


def diagnose(package_dir: Path) -> str | None:
    """Why the compiled core in ``package_dir`` may not run (a line for the user; ``""``: none
    was built, nothing to say), or None: it may."""
    built = [m for m in MODULES if _extension(package_dir / f"{m}.py")]
    try:
        recorded: list[str] | None = (package_dir / DIGEST_FILE).read_text().split("\n")
    except OSError:
        recorded = None  # no complete build recorded (no compiler, or KVSIM_NO_COMPILE)
    if not built and recorded is None:
        return ""
    reason = None
    if not built:
        reason = "the engine core was compiled, but not for this Python"
    elif len(built) < len(MODULES) or not _extension(package_dir / (GROUP_FILE + ".py")):
        reason = "the compiled engine core is incomplete"
    elif recorded is None:
        reason = "the compiled engine core has no record of its sources"
    else:
        files = [f for f in recorded[1:] if f]
        try:
            current = source_digest(package_dir.parent, files)
        except OSError:
            current = None
        if recorded[0] != current:
            reason = "the engine core's source changed since it was compiled"
    return reason


def choose(package_dir: Path, package: str) -> str:
    """Decide, once per process, whether the compiled core or its source runs; returns
    ``"compiled"`` or ``"python"``. Called by the package's ``__init__`` before any of
    ``MODULES`` is imported."""
    sources = {f"{package}.{m.replace('/', '.')}": package_dir / f"{m}.py" for m in MODULES}
    reason = diagnose(package_dir)
    if reason == "":
        return "python"
    if os.environ.get(ENV_PURE, "") not in ("", "0"):
        reason = ""
    if reason is None:
        return "compiled"
    # NOTE: also any other module an older build compiled (its extension would load an engine
    # library that no longer has it, or mix compiled and source classes).
    for ext in extensions(package_dir):
        stem = ext.name[: ext.name.index(".")]
        source = ext.with_name(stem + ".py")
        if source.exists():
            rel = source.relative_to(package_dir).with_suffix("")
            sources.setdefault(".".join((package, *rel.parts)), source)
    if reason:
        print(
            f"kvsim: {reason}; running its Python source (reinstalling kvsim compiles it again)",
            file=sys.stderr,
        )
    sys.meta_path.insert(0, _SourceFinder(sources))
    return "python"
