"""Writing a run's results: all files appear together or not at all, wherever ``--out`` points,
and never over an earlier run's.

A destination that already holds results (any of :data:`FILES`) is left alone: the run goes to
the first free sibling ``<out>-2``, ``<out>-3``, … (checked again at the final rename, in case
another run took the name meanwhile), unless ``force`` asks to replace them. A destination that
exists without results (an empty folder, a mount point) is written into.

The destination is prepared before the run (:class:`ResultsFolder`), so a folder that cannot be
written — read-only, a file in the way, a bad name — fails in one line before anything is
simulated. Files are written into a staging folder on the destination's own file system and
moved into place only when every one is complete, so an error or an interrupt never leaves a
half-written result:

- a new ``out`` is staged beside it (``out.parent/.kvsim-staging-*``) and renamed into place in
  one step;
- an existing ``out`` (a mount point, say, where a sibling would be on another file system) is
  staged inside it (``out/.kvsim-staging-*``) and each file replaced by ``os.replace`` with
  SIGINT and SIGTERM held until the last one is in place.

Either way every rename stays on one file system (``os.replace`` across file systems fails
with "Invalid cross-device link"), and on failure the staging folder and any folder created for
the run are removed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .errors import KvsimError, clip
from .metrics import Results
from .scenario import Scenario

FILES = (
    "summary.json",
    "requests.csv",
    "timeseries.csv",
    "scenario.resolved.yaml",
    "report.html",
)
_STAGING_PREFIX = ".kvsim-staging-"
MAX_SIBLINGS = 100_000
"""``<out>-2`` … ``<out>-100000``: beyond, the destination is refused."""


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def summary_json(results: Results) -> str:
    return json.dumps(_clean(results.summary), indent=2, sort_keys=False) + "\n"


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def write_files(
    folder: Path, scenario: Scenario, results: Results, plotlyjs: bool | str = True
) -> None:
    """Write every file of :data:`FILES` into ``folder``; ``plotlyjs``: how report.html gets
    plotly.js (embedded, or a path to a shared copy: see ``pages``)."""
    (folder / "summary.json").write_text(summary_json(results), encoding="utf-8")
    with open(folder / "requests.csv", "w", encoding="utf-8", newline="") as f:
        results.write_requests_csv(f)
    with open(folder / "timeseries.csv", "w", encoding="utf-8", newline="") as f:
        f.write(results.timeseries.csv())
    (folder / "scenario.resolved.yaml").write_text(scenario.resolved_yaml(), encoding="utf-8")
    from .report import report_html

    page = report_html(results, scenario, plotlyjs)
    (folder / "report.html").write_text(page, encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


class SignalsHeld:
    """SIGINT and SIGTERM are held while files are moved into place (a run's, a sweep point's),
    then raised again.

    NOTE: held by swapping the Python handlers, not by a signal mask: a mask is per thread, and
    the kernel hands a process-directed signal to any thread that does not block it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self._saved = {}
        self._pending: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._saved[s] = signal.signal(s, lambda n, f: self._pending.append(n))
        return self

    def __exit__(self, *exc):
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        for n in self._pending:
            signal.raise_signal(n)  # through the handler it found (default: as if not held)


class ResultsFolder:
    """Where a run's results go, prepared before the run and filled at its end.

    Use as a context manager: entering checks the destination and creates the staging folder
    (one-line :class:`KvsimError` if it cannot); :meth:`commit` moves the results into place;
    leaving without a commit (an error, an interrupt) removes whatever was created for the run.
    """

    def __init__(self, out_dir: str | Path, force: bool = False, names: tuple[str, ...] = FILES):
        self.names = names
        """The files a result is (a run's :data:`FILES`, or a comparison's, a plan's)."""
        self.requested = Path(out_dir)
        """The destination asked for."""
        self.out = self.requested
        """The folder the results go to: the one asked for, or a free sibling of it."""
        self.force = force
        """Replace the results a destination holds instead of writing beside it."""
        self._created: list[Path] = []  # folders made for this run, outermost first
        self._staging: Path | None = None
        self._new = False

    @property
    def relocated(self) -> bool:
        """The destination held results, so they went to a sibling."""
        return self.out != self.requested

    def _free_sibling(self, after: int = 1) -> Path:
        for k in range(after + 1, MAX_SIBLINGS + 1):
            candidate = self.requested.with_name(f"{self.requested.name}-{k}")
            if not os.path.lexists(candidate):
                return candidate
        raise KvsimError(
            f"--out {clip(str(self.requested), 120)}: holds results, and so do its siblings up "
            f"to -{MAX_SIBLINGS}; choose another --out, or --force to replace them"
        )

    def _sibling_index(self) -> int:
        if not self.relocated:
            return 1
        return int(self.out.name.rsplit("-", 1)[1])

    def _fail(self, what: str, e: BaseException) -> KvsimError:
        why = _why(e) if isinstance(e, OSError) else str(e)
        return KvsimError(f"--out {clip(str(self.out), 120)}: {what} ({clip(why, 120)})")

    def __enter__(self) -> ResultsFolder:
        out = self.requested
        try:
            if out.exists() and not out.is_dir():
                raise KvsimError(f"--out {clip(str(out), 120)}: exists and is not a folder")
            if not self.force and out.is_dir() and holds_results(out, self.names):
                out = self._free_sibling()
            self.out = out
            self._new = not out.exists()
            parent = out.parent if self._new else out
            missing = []
            p = parent
            while not p.exists():
                missing.append(p)
                p = p.parent
            for d in reversed(missing):
                d.mkdir()
                self._created.append(d)
            self._staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=parent))
            # mkdtemp makes it private (0700); a new results folder gets the usual mode.
            os.chmod(self._staging, 0o777 & ~_umask())
        except KvsimError:
            self._remove()
            raise
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            self._remove()
            raise self._fail("cannot create the results folder", e) from None
        return self

    def commit(self, scenario: Scenario, results: Results, plotlyjs: bool | str = True) -> Path:
        """Write the results and move them into place, all together."""
        return self._commit(lambda folder: write_files(folder, scenario, results, plotlyjs))

    def commit_files(self, files: dict[str, bytes]) -> Path:
        """Write ``files`` (name → bytes; the names are :attr:`names`) and move them into place,
        all together."""
        assert set(files) == set(self.names), (sorted(files), self.names)

        def write(folder: Path) -> None:
            for name, data in files.items():
                (folder / name).write_bytes(data)

        return self._commit(write)

    def _commit(self, write) -> Path:
        assert self._staging is not None, "commit() outside the with block"
        try:
            write(self._staging)
        except OSError as e:
            raise self._fail("cannot write the results; nothing was written", e) from None
        try:
            with SignalsHeld():
                try:
                    if self._new:
                        self._rename_into_place()
                    else:
                        for name in self.names:
                            os.replace(self._staging / name, self.out / name)
                except OSError as e:
                    raise self._fail("cannot move the results into place", e) from None
                self._created = []  # the results are in place: keep every folder
        except KeyboardInterrupt as e:
            # A signal held during the moves is delivered as they end: the results are in.
            e.results_written = self.out
            raise
        return self.out

    def _rename_into_place(self) -> None:
        """Rename the staging folder to ``out``; if another run took the name since the check
        (a folder that is not empty now), to the next free sibling."""
        while True:
            try:
                os.rename(self._staging, self.out)
                self._staging = None
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or self.force:
                    raise
                self.out = self._free_sibling(self._sibling_index())

    def __exit__(self, exc_type, exc, tb) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []


def holds_results(folder: Path, names: tuple[str, ...] = FILES) -> bool:
    """Whether ``folder`` holds any of ``names`` (by default, any file a run writes)."""
    return any(os.path.lexists(folder / name) for name in names)


def write_results(
    out_dir: str | Path, scenario: Scenario, results: Results, plotlyjs: bool | str = True
) -> Path:
    """Write summary.json, requests.csv, timeseries.csv, the resolved scenario and report.html
    into ``out_dir``, all together or not at all; ``plotlyjs``: see ``pages``."""
    with ResultsFolder(out_dir) as folder:
        return folder.commit(scenario, results, plotlyjs)
