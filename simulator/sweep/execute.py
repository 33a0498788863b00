"""Running a sweep: one resumable folder per point, a local process pool or Ray tasks.

Layout of a sweep's folder (``runs/<name>/`` or ``--out``)::

    sweep.json                   what the points are (overrides, resolved scenario hashes)
    points/<index>-<hash>/       one run's files, as `kvsim run` writes them, and point.json
    plotly.min.js                the points' reports use this one copy (not one each)
    results.csv, results.parquet the table (see table.py)
    report.html                  curves and Pareto fronts (see report.py)

A point runs in a worker (a process of the pool, or a Ray task on any node of a cluster) that
returns its files' bytes; the driver alone writes the sweep's folder, one point at a time as they
finish, each point through a staging folder renamed into place, so an interrupt leaves finished
points complete. A point whose folder holds a complete result of the same overrides and the same
resolved scenario is reused; a folder of other overrides, or a sweep folder of another sweep, is
an error unless ``force``. The table is built in point order from the points' summary.json
files, so it is the same whichever executor ran the points and in whatever order they finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import KvsimError
from ..figures import plotly_js
from ..output import FILES, SignalsHeld, write_results
from ..pages import PLOTLY_FILE
from ..progress import ProgressBar
from ..scenario import load_scenario
from .report import report_html
from .spec import Point, Sweep, resolve_points
from .table import Table, build_table, csv_text, parquet_bytes, read_summary, write_atomic

DEFINITION = "sweep.json"
POINT_FILE = "point.json"
EXECUTORS = ("local", "ray")
_POINT_DIR = re.compile(r"\d+-[0-9a-f]{8}")

Task = tuple[int, str, list[str], tuple[str, ...], str, tuple[str, ...]]
Result = tuple[int, "dict[str, bytes] | None", "str | None"]


def run_point(task: Task) -> Result:
    """Run one point as ``kvsim run BASE --set …`` does and return (index, its files' bytes,
    None), or (index, None, the error line) for a user error."""
    from kvsim.traces import TraceError

    from ..cluster import simulate

    index, base, overrides, policy_path, override_dir, hardware_files = task
    try:
        scenario = load_scenario(base, overrides, policy_path, override_dir, hardware_files)
        results = simulate(scenario)
        with tempfile.TemporaryDirectory(prefix="kvsim-point-") as tmp:
            # A point's report uses the sweep's one copy of plotly.js, two folders up.
            out = write_results(Path(tmp) / "run", scenario, results, f"../../{PLOTLY_FILE}")
            files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    except (KvsimError, TraceError) as e:
        return index, None, str(e)
    return index, files, None


@dataclass
class SweepRun:
    """What ``run_sweep`` did."""

    out: Path
    table: Table
    ran: list[int]
    """Indices of the points simulated now."""
    reused: list[int]
    """Indices of the points whose folder already held their result."""


def _definition(sweep: Sweep, resolved: list[str]) -> dict:
    """What the sweep's folder records; its ``points`` decide whether a folder is this sweep's
    (the base and name are for the reader: a sweep file moved or renamed is the same sweep)."""
    return {
        "name": sweep.name,
        "base": sweep.base.as_posix(),
        "points": [
            {
                "folder": p.folder,
                "overrides": list(p.overrides),
                "scenario_sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
            for p, text in zip(sweep.points, resolved, strict=True)
        ],
    }


def _prepare(out: Path, definition: dict, force: bool) -> None:
    """Check that ``out`` is new, empty or this sweep's folder (unless ``force``), then record
    the sweep's definition there."""
    if out.exists() and not out.is_dir():
        raise KvsimError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        try:
            old = json.loads((out / DEFINITION).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise KvsimError(
                f"--out {out}: exists and holds no sweep; choose another --out, or --force to "
                "write the sweep there"
            ) from None
        if not isinstance(old, dict) or old.get("points") != definition["points"]:
            raise KvsimError(
                f"--out {out}: holds the results of a different sweep (other points or base "
                "scenario); choose another --out, or --force to replace them"
            )
    points = out / "points"
    points.mkdir(parents=True, exist_ok=True)
    keep = {Path(p["folder"]).name for p in definition["points"]}
    for entry in points.iterdir():  # staging folders an interrupt left; other sweeps' points
        if entry.name.startswith(".") or (
            force and _POINT_DIR.fullmatch(entry.name) and entry.name not in keep
        ):
            shutil.rmtree(entry, ignore_errors=True)
    data = json.dumps(definition, indent=2) + "\n"
    write_atomic(out / DEFINITION, data.encode())
    js = plotly_js().encode()
    if not (out / PLOTLY_FILE).is_file() or (out / PLOTLY_FILE).read_bytes() != js:
        write_atomic(out / PLOTLY_FILE, js)


def _state(folder: Path, point: Point, resolved: str) -> str:
    """``new``, ``done``, ``incomplete`` (re-run it) or ``different`` (another point's)."""
    if not folder.exists():
        return "new"
    try:
        meta = json.loads((folder / POINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "incomplete"
    if not isinstance(meta, dict) or meta.get("overrides") != list(point.overrides):
        return "different"
    if not all((folder / name).is_file() for name in FILES):
        return "incomplete"
    if (folder / "scenario.resolved.yaml").read_text(encoding="utf-8") != resolved:
        return "different"
    try:
        read_summary(folder)
    except (OSError, ValueError):
        return "incomplete"
    return "done"


def _commit(out: Path, point: Point, files: dict[str, bytes]) -> None:
    """Write a point's files into a staging folder and rename it into place."""
    final = out / point.folder
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        meta = {"index": point.index, "overrides": list(point.overrides)}
        (staging / POINT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        mask = os.umask(0o22)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp's folders are private; results are not
        if final.exists():  # a point re-run: its old folder goes only once the new is in place
            old = staging.with_name(staging.name + ".old")
            os.rename(final, old)
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def worker_init() -> None:
    """A pool worker's signals: the driver handles Ctrl-C and stops the pool; a worker must not
    die half-way on its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pool_context():
    """A multiprocessing context for worker pools (the sweep's, the planner's): forkserver
    (children fork from a clean, single-threaded process that has kvsim imported), or spawn
    where there is none."""
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload([__name__])
    return ctx


def run_local(tasks: list[Task], workers: int, address, on_result, task=run_point) -> None:
    """Run the tasks on a pool of ``workers`` processes; ``on_result`` as each finishes (in the
    driver, while the others run). ``task``: the worker function (tests replace it)."""
    with pool_context().Pool(min(workers, len(tasks)), initializer=worker_init) as pool:
        for result in pool.imap_unordered(task, tasks, chunksize=1):
            on_result(*result)
    # Leaving the with block terminates the pool: on an error or Ctrl-C too.


def run_ray(tasks: list[Task], workers: int, address: str | None, on_result) -> None:
    """Run each task as a Ray task: on the cluster at ``address``, or on a local Ray cluster of
    ``workers`` CPUs started for the sweep (and stopped after it)."""
    try:
        import ray
    except ImportError:
        raise KvsimError(
            "--executor ray needs Ray, an optional extra: pip install 'kvsim[ray]' "
            "(in a checkout: pip install -e '.[ray]')"
        ) from None
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"--ray-address {address}" if address else "--executor ray"
            raise KvsimError(f"{where}: cannot start or reach a Ray cluster ({e})") from None
    pending: list = []
    try:
        remote = ray.remote(num_cpus=1)(run_point)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            on_result(*ray.get(ready[0]))
    finally:
        for ref in pending:  # an error or Ctrl-C: nothing more is wanted
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


_RUNNERS: dict[str, Callable] = {"local": run_local, "ray": run_ray}


def run_sweep(
    sweep: Sweep,
    out: Path,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    force: bool = False,
    progress: bool = False,
    policy_path: tuple[str, ...] = (),
    hardware_files: tuple[str, ...] = (),
) -> SweepRun:
    """Validate every point, run those not done yet, write the table and the report.

    Ctrl-C (or SIGTERM, where the caller turns it into a KeyboardInterrupt) stops the run; the
    points finished by then stay complete, and running the sweep again reuses them (the
    KeyboardInterrupt carries ``points_done`` and ``points_total``). ``policy_path``: folders
    dotted policy paths may be imported from, as ``kvsim run --policy-path``; ``hardware_files``
    add GPUs to the catalog (absolute paths: workers may run elsewhere)."""
    resolved = resolve_points(sweep, policy_path, hardware_files)
    _prepare(out, _definition(sweep, resolved), force)
    todo: list[Point] = []
    reused: list[int] = []
    for point, text in zip(sweep.points, resolved, strict=True):
        state = _state(out / point.folder, point, text)
        if state == "different" and not force:
            raise KvsimError(
                f"--out {out}: {point.folder} holds the result of other overrides or another "
                "scenario; --force replaces it"
            )
        if state == "done":
            reused.append(point.index)
        else:
            todo.append(point)
    total = len(sweep.points)
    bar = ProgressBar(total, label="points", enabled=progress)
    done = len(reused)
    bar.update(done)

    def on_result(index: int, files: dict[str, bytes] | None, error: str | None) -> None:
        nonlocal done
        point = sweep.points[index]
        if error is not None:
            shown = " ".join(f"--set {o}" for o in point.overrides)
            raise KvsimError(f"{sweep.path}: point {index} ({shown}): {error}")
        with SignalsHeld():  # the folder and the count of points done change together
            _commit(out, point, files)
            done += 1
        bar.update(done)

    try:
        if todo:
            base = str(sweep.base.resolve())  # workers may run elsewhere (a Ray node)
            paths = tuple(str(Path(d).resolve()) for d in policy_path)
            # File paths in the sweep file's values are relative to the sweep file.
            here = str(sweep.path.parent.resolve())
            tasks = [(p.index, base, list(p.overrides), paths, here, hardware_files)
                     for p in todo]  # fmt: skip
            _RUNNERS[executor](tasks, workers or os.cpu_count() or 1, ray_address, on_result)
    except KeyboardInterrupt as e:
        e.points_done, e.points_total = done, total
        raise
    finally:
        bar.close()
    summaries = [read_summary(out / p.folder) for p in sweep.points]
    table = build_table(list(sweep.points), summaries)
    write_atomic(out / "results.csv", csv_text(table.columns, table.rows).encode())
    write_atomic(out / "results.parquet", parquet_bytes(table.columns, table.rows))
    write_atomic(out / "report.html", report_html(sweep, table).encode())
    return SweepRun(out, table, [p.index for p in todo], reused)
