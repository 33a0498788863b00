"""Build hook: compile the engine core with mypyc where it can (see ``simulator/_native.py``).

Everything else is in pyproject.toml. Without mypyc or a working C compiler, or with
``KVSIM_NO_COMPILE=1``, the package installs as pure Python and runs the same code as source;
``KVSIM_REQUIRE_COMPILED=1`` (CI) makes any of those an error instead.
"""

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE = runpy.run_path(str(ROOT / "simulator" / "_native.py"))
REQUIRED = os.environ.get("KVSIM_REQUIRE_COMPILED", "") not in ("", "0")


def _warn(msg: str) -> None:
    if REQUIRED:
        sys.exit(f"kvsim setup: {msg}, and KVSIM_REQUIRE_COMPILED is set")
    print(f"kvsim setup: {msg}; the engine core stays pure Python", file=sys.stderr)


class BuildExt(build_ext):
    """Builds the engine's extensions; an in-place build (an editable install) first removes the
    ones an earlier build left beside the sources. Records what they were compiled from (the
    digest file) where the package is built, only when every one of them was built."""

    def run(self) -> None:
        package = ROOT / "simulator"
        if self.inplace:
            for stale in NATIVE["extensions"](package):
                stale.unlink()
            (package / NATIVE["DIGEST_FILE"]).unlink(missing_ok=True)
        super().run()
        out = package if self.inplace else Path(self.build_lib) / "kvsim" / "simulator"
        digest = out / NATIVE["DIGEST_FILE"]
        built = all(Path(self.get_ext_fullpath(e.name)).exists() for e in self.extensions)
        if self.extensions and built:
            digest.write_text(NATIVE["record"](package))
        else:
            digest.unlink(missing_ok=True)
            if self.extensions:
                _warn("the C compiler failed")


def _stage() -> Path:
    """``build/mypyc-src/kvsim/{simulator,traces}``, links to this checkout's folders (mypy names
    a module by its path: the installed layout), made again on every build."""
    stage = ROOT / "build" / "mypyc-src" / "kvsim"
    stage.mkdir(parents=True, exist_ok=True)
    for pkg in ("simulator", "traces"):
        link = stage / pkg
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / pkg, target_is_directory=True)
    return stage.parent


def native_extensions() -> list:
    """mypyc's extension modules for the engine core (optional: a failed compile skips them)."""
    if os.environ.get("KVSIM_NO_COMPILE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed")
        return []
    cwd = os.getcwd()
    try:
        os.chdir(_stage())
        extensions = mypycify(
            [
                "--ignore-missing-imports",
                "--follow-imports=silent",
                "--explicit-package-bases",
                "--disable-error-code=annotation-unchecked",
                *[f"kvsim/simulator/{m}.py" for m in NATIVE["MODULES"]],
            ],
            opt_level="3",
            group_name=NATIVE["GROUP"],
            target_dir=str(ROOT / "build" / "mypyc-c"),
        )
    except (Exception, SystemExit) as e:  # a type error mypyc refuses, no links, no mypy
        _warn(f"mypyc failed ({e!r})")
        return []
    finally:
        os.chdir(cwd)
    for ext in extensions:
        ext.optional = not REQUIRED  # no C compiler: build_ext warns and skips it
    return extensions


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildExt})
