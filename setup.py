"""Build hook: compile the engine core with mypyc where it can (see ``simulator/_native.py``).

Everything else is in pyproject.toml. Without mypyc or a working C compiler, or with
``KVSIM_NO_COMPILE=1``, the package installs as pure Python and runs the same code as source.
"""

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _warn(msg: str) -> None:
    print(f"kvsim setup: {msg}; the engine core stays pure Python", file=sys.stderr)


def native_extensions() -> list:
    """mypyc's extension modules for the engine core (optional: a failed compile skips them)."""
    native = runpy.run_path(str(ROOT / "simulator" / "_native.py"))
    digest_file = ROOT / "simulator" / native["DIGEST_FILE"]
    digest_file.unlink(missing_ok=True)
    for stale in native["extensions"](ROOT / "simulator"):  # an earlier build's, maybe of others
        stale.unlink()
    if os.environ.get("KVSIM_NO_COMPILE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed")
        return []
    # mypy names modules by their path: compile them as kvsim/simulator/*.py (the installed
    # layout) through links to the source folders.
    stage = ROOT / "build" / "mypyc-src" / "kvsim"
    stage.mkdir(parents=True, exist_ok=True)
    for pkg in ("simulator", "traces"):
        link = stage / pkg
        if not link.is_symlink():
            link.symlink_to(ROOT / pkg, target_is_directory=True)
    paths = [f"kvsim/simulator/{m}.py" for m in native["MODULES"]]
    cwd = os.getcwd()
    os.chdir(stage.parent)
    try:
        extensions = mypycify(
            [
                "--ignore-missing-imports",
                "--follow-imports=silent",
                "--explicit-package-bases",
                "--disable-error-code=annotation-unchecked",
                *paths,
            ],
            opt_level="3",
            group_name=native["GROUP"],
            target_dir=str(ROOT / "build" / "mypyc-c"),
        )
    except (Exception, SystemExit) as e:  # a type error mypyc refuses, or no mypy at all
        _warn(f"mypyc failed ({e!r})")
        return []
    finally:
        os.chdir(cwd)
    for ext in extensions:
        ext.optional = True  # no C compiler: build_ext warns and skips it
    digest_file.write_text(native["source_digest"](ROOT / "simulator") + "\n")
    return extensions


setup(ext_modules=native_extensions())
