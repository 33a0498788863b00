"""The engine core compiled with mypyc, or its Python source: which one a process runs.

The simulation loop's modules (``MODULES``: scheduler, replica, pricer, KV cache, prefix tree,
usage meter, sampled series) are plain typed Python, compiled to C extensions by ``setup.py`` at
install time when mypyc and a C compiler are there (about 1.5x on the loop, same results to the
byte); elsewhere the build skips them and Python runs the source. Python prefers an extension
module to the ``.py`` beside it, so an extension built from older source would silently shadow
an edit: the build records a digest of the sources it compiled (``DIGEST_FILE``), and
:func:`choose` runs the source, all of it, when that digest no longer matches (one line on
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
)
"""The compiled modules, as paths under ``simulator/`` without ``.py``."""
GROUP = "kvsim.simulator._core"
"""mypyc's group name: its shared library is ``<GROUP>__mypyc``."""
DIGEST_FILE = "_native.digest"
ENV_PURE = "KVSIM_PURE_PYTHON"


def source_digest(package_dir: Path) -> str:
    """SHA-256 over the compiled modules' sources, in ``MODULES`` order."""
    h = hashlib.sha256()
    for m in MODULES:
        h.update(m.encode() + b"\0")
        h.update((package_dir / f"{m}.py").read_bytes())
    return h.hexdigest()


def _extension(source: Path) -> bool:
    stem = source.with_suffix("")
    return any(
        stem.with_name(stem.name + s).exists() for s in importlib.machinery.EXTENSION_SUFFIXES
    )


def extensions(package_dir: Path) -> list[Path]:
    """Every extension module under ``package_dir`` (the package has none but what mypyc built:
    ``setup.py`` removes them all before a build, so a module dropped from ``MODULES`` leaves no
    stale one behind)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(p for p in package_dir.rglob("*.*") if p.name.endswith(suffixes))


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


def choose(package_dir: Path, package: str) -> str:
    """Decide, once per process, whether the compiled core or its source runs; returns
    ``"compiled"`` or ``"python"``. Called by the package's ``__init__`` before any of
    ``MODULES`` is imported."""
    sources = {f"{package}.{m.replace('/', '.')}": package_dir / f"{m}.py" for m in MODULES}
    built = [p for p in sources.values() if _extension(p)]
    if not built:
        return "python"  # nothing compiled (no compiler, or KVSIM_NO_COMPILE at install)
    reason = None
    if os.environ.get(ENV_PURE, "") not in ("", "0"):
        reason = ""
    elif len(built) < len(sources):
        reason = "the compiled engine core is incomplete"
    else:
        try:
            recorded = (package_dir / DIGEST_FILE).read_text().strip()
        except OSError:
            recorded = None
        if recorded != source_digest(package_dir):
            reason = "the engine core's source changed since it was compiled"
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
            f"kvsim: {reason}; running its Python source (`pip install -e .` compiles it again)",
            file=sys.stderr,
        )
    sys.meta_path.insert(0, _SourceFinder(sources))
    return "python"
