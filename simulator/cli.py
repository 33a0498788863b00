"""The ``kvsim`` command line.

    kvsim --version
    kvsim run SCENARIO [--set path=value ...] [--policy-path DIR ...] [--out DIR] [--force]
              [--exact-steps]
    kvsim validate SCENARIO [--set ...] [--policy-path DIR ...] [--hardware-file FILE ...]
    kvsim compare RUN_A RUN_B [RUN ...] [--out DIR] [--force]
    kvsim plan SCENARIO [--slo SPEC] [--rate R | --replicas N] [--set ...] [--workers N]
               [--max-replicas N] [--tolerance F] [--out DIR] [--force]
    kvsim sweep SWEEP.yaml [--out DIR] [--executor local|ray] [--workers N] [--ray-address A]
                [--policy-path DIR ...] [--force] [--no-progress]
    kvsim schema
    kvsim trace stats FILE [--format F]
    kvsim calibrate [--model M] [--tp N] [--out DIR] [--ops a,b] [--tiny] [--dry-run] [LIMITS]
    kvsim fit MEASUREMENTS.csv --out PROFILE.yaml [LIMITS]

LIMITS: [--max-mape F] [--max-error F] [--accept-error] (held-out error limits of a profile).

A run never overwrites another: an output folder that holds results is kept and the run goes to
<out>-2, <out>-3, … unless --force. A user mistake prints one line (``kvsim: error: …``) and exits
with status 2, without a traceback and without an output folder. SIGTERM is handled as SIGINT is:
the run stops, nothing is written, and the staging folder is removed (exit status 130, or 143 for
SIGTERM). A scenario is data: a dotted policy path is imported from the installed packages or a
``--policy-path`` folder, never from the current folder.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

from .errors import KvsimError, clip

MAX_ERROR_CHARS = 1000
"""An error line longer than this is cut: values in it are already echoed at most 200 long."""
VALIDATE_ROWS = 1000
"""Requests of the workload that ``validate`` reads and checks as ``run`` would."""

EXAMPLES = """examples:
  kvsim run scenarios/quickstart.yaml
  kvsim run scenarios/mooncake_conversation.yaml --set cluster.replicas=4 --out runs/mc4
  kvsim run scenarios/quickstart.yaml --set cache.eviction=lfu --set workload.rate=20
  kvsim sweep scenarios/sweeps/quickstart_replicas.yaml
  kvsim sweep scenarios/sweeps/quickstart_replicas.yaml --executor ray --out runs/qs-ray
  kvsim plan scenarios/quickstart.yaml --slo ttft_p99=2s,tpot_p99=100ms --rate 30
  kvsim plan scenarios/quickstart.yaml --replicas 2
  kvsim compare runs/quickstart runs/quickstart-2
  kvsim validate scenarios/mooncake_conversation.yaml
  kvsim trace stats ../shared/traces/mooncake_conversation.jsonl
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as kvsim's one line (exit 2) instead of usage + error."""

    def error(self, message: str):
        raise KvsimError(f"{self.prog}: {message} (see {self.prog} --help)")


def _version() -> str:
    """The installed distribution's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvsim")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvsim",
        description="Simulate an LLM serving cluster and its KV-cache policies on a request trace.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"kvsim {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    overrides = _Parser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a scenario field, e.g. --set cluster.replicas=4 (repeatable)",
    )
    overrides.add_argument(
        "--policy-path",
        dest="policy_path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder to import dotted policy paths from, besides the installed packages "
        "(repeatable; the current folder is never searched unless named: --policy-path .)",
    )
    overrides.add_argument(
        "--hardware-file",
        dest="hardware_files",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML file of GPUs to add to the catalog, checked as the catalog is (repeatable)",
    )

    run = sub.add_parser("run", parents=[overrides], help="run a scenario, print its summary")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument(
        "--out",
        metavar="DIR",
        help="results folder (default: runs/<scenario name>); one that holds results is kept "
        "and the run goes to DIR-2, DIR-3, … unless --force",
    )
    run.add_argument(
        "--exact-steps",
        action="store_true",
        help="price every decode iteration alone instead of fast-forwarding (same results, slower)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="replace the results the output folder holds (by default a run never overwrites "
        "one: it writes to <out>-2, <out>-3, …)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print summary.json instead of the table")

    sw = sub.add_parser(
        "sweep",
        help="run a scenario over a grid of overrides: one table, curves and Pareto fronts",
        description="Run a base scenario once per point of a grid of --set overrides (a sweep "
        "file: base, set, grid, plots; see the README), one folder per point, and write "
        "results.csv, results.parquet and report.html. Points already done are reused, so an "
        "interrupted sweep resumes when run again.",
    )
    sw.add_argument("sweep", help="sweep YAML file")
    sw.add_argument("--out", metavar="DIR", help="results folder (default: runs/<sweep name>)")
    sw.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: a process pool (default); ray: one Ray task per point (the ray extra)",
    )
    sw.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="processes of the local pool, or CPUs of the local Ray cluster (default: all cores)",
    )
    sw.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="a running Ray cluster to use (default: start a local one for the sweep)",
    )
    sw.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that holds another sweep's results, replacing them",
    )
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument(
        "--policy-path",
        dest="policy_path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder to import dotted policy paths from, as for kvsim run (repeatable)",
    )
    sw.add_argument(
        "--hardware-file",
        dest="hardware_files",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML file of GPUs to add to the catalog, as for kvsim run (repeatable)",
    )

    pl = sub.add_parser(
        "plan",
        parents=[overrides],
        help="fewest replicas meeting an SLO at a rate, or the highest rate a cluster serves",
        description="Search over simulations of a scenario: with --rate R (default: the "
        "scenario's rate), the fewest replicas (GPUs = replicas × tensor parallel) whose run "
        "meets the SLO at R requests per second (with a prefill and a decode pool, the fewest "
        "replicas and their best prefill:decode split, every split of each total tried); with "
        "--replicas N, the highest rate N replicas serve within it. Prints the answer and "
        "every point tried; writes plan.csv, plan.json and report.html (each SLO metric "
        "against replicas, the split or rate) into runs/<name>-plan.",
    )
    pl.add_argument("scenario", help="scenario YAML file")
    pl.add_argument(
        "--slo",
        metavar="SPEC",
        help="objectives, e.g. ttft_p99=2s,tpot_p99=100ms (metrics ttft, tpot, e2e, queue, job; "
        "statistics p50, p90, p99, mean; default: the scenario's slo as p99)",
    )
    pl.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="requests per second (a trace's rate_scale is set to reach it)",
    )
    pl.add_argument(
        "--replicas",
        type=_positive,
        metavar="N",
        help="search the highest rate N replicas serve within the SLO",
    )
    pl.add_argument(
        "--max-replicas",
        type=_positive,
        default=256,
        metavar="N",
        help="the fewest-replicas search gives up above this (default 256)",
    )
    pl.add_argument(
        "--tolerance",
        type=_fraction,
        default=0.02,
        metavar="F",
        help="the rate search stops when its bracket is within this relative width (default 0.02)",
    )
    pl.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="simulations run at once (default: all cores, at most 3: a round's points)",
    )
    pl.add_argument(
        "--out",
        metavar="DIR",
        help="default: runs/<scenario name>-plan (never overwritten: DIR-2, … unless --force)",
    )
    pl.add_argument("--force", action="store_true", help="replace a plan DIR holds")
    pl.add_argument("--no-progress", action="store_true", help="no round-by-round progress")

    cmp_ = sub.add_parser(
        "compare",
        help="runs side by side: metrics and their differences, overlaid CDFs",
        description="Compare run folders (as kvsim run writes them): the scenario fields that "
        "differ, every headline metric of each run and its difference from the first run "
        "(absolute and relative), written as compare.csv with an overlay report.html (latency "
        "CDFs, queues and KV use over time).",
    )
    cmp_.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders; the first is the reference"
    )
    cmp_.add_argument("--out", metavar="DIR", help="default: runs/compare (never overwritten: "
                      "DIR-2, DIR-3, … unless --force)")  # fmt: skip
    cmp_.add_argument("--force", action="store_true", help="replace a comparison DIR holds")

    val = sub.add_parser("validate", parents=[overrides], help="check a scenario and exit")
    val.add_argument("scenario")

    sub.add_parser("schema", help="print the scenario JSON schema (for editors)")

    trace = sub.add_parser("trace", help="work with request traces")
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    tsub.required = True
    stats = tsub.add_parser("stats", help="requests, rate, lengths, prefix-hit ratio of a trace")
    stats.add_argument("file")
    from kvsim.traces import FORMATS

    stats.add_argument("--format", choices=list(FORMATS))
    cal = sub.add_parser(
        "calibrate",
        help="time the real kernels on a GPU, fit latency models, write a profile",
        description="Time every op of the op vocabulary with the real kernels over a grid built "
        "from a model's shapes, fit a latency model per op and write measurements.csv and "
        "profile.yaml. Needs a CUDA GPU (or TRITON_INTERPRET=1 with --tiny to run the pipeline "
        "on a CPU, with meaningless timings).",
    )
    cal.add_argument("--model", default="llama-3.1-8b", help="catalog model or config.json")
    cal.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of the shapes")
    cal.add_argument("--out", metavar="DIR", help="default: calibration/profiles/<device>-<model>")
    cal.add_argument("--ops", help="comma-separated ops to measure (default: all)")
    cal.add_argument("--tiny", action="store_true", help="a tiny grid (pipeline checks)")
    cal.add_argument("--dry-run", action="store_true", help="print the grid and expected time")
    _limit_arguments(cal)

    fit = sub.add_parser(
        "fit",
        help="refit a profile from a measurements CSV",
        description="Fit a latency model per op to a measurements CSV (as kvsim calibrate writes "
        "it) and write the profile, keeping the CSV's run record (model, tensor-parallel degree, "
        "device, software). An op whose held-out error exceeds the limits is refused (nothing is "
        "written) unless --accept-error is given; the profile then records the acceptance.",
    )
    fit.add_argument("measurements")
    fit.add_argument("--out", required=True, metavar="PROFILE.yaml")
    _limit_arguments(fit)
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: a positive integer, e.g. 4")
    return n


def _float_in(ok, allowed: str):
    """An argparse type: a float for which ``ok`` holds, else ``allowed`` in the message."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = -1.0
        if not ok(x):
            raise argparse.ArgumentTypeError(f"{text!r}: allowed: {allowed}")
        return x

    return parse


_positive_float = _float_in(lambda x: 0 < x < float("inf"), "a positive number, e.g. 30")
_fraction = _float_in(lambda x: 0 < x <= 1, "a fraction in (0, 1], e.g. 0.1")


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    from .profile_limits import MAX_HELDOUT_ERROR, MAX_HELDOUT_MAPE

    p.add_argument(
        "--max-mape",
        type=_fraction,
        default=MAX_HELDOUT_MAPE,
        metavar="FRACTION",
        help=f"held-out MAPE above which an op is refused (default {MAX_HELDOUT_MAPE})",
    )
    p.add_argument(
        "--max-error",
        type=_fraction,
        default=MAX_HELDOUT_ERROR,
        metavar="FRACTION",
        help=f"worst held-out error above which an op is refused (default {MAX_HELDOUT_ERROR})",
    )
    p.add_argument(
        "--accept-error",
        action="store_true",
        help="write the profile even with ops above the limits; it records them as accepted",
    )


def _kernels_needed(what: str):
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError:
        raise KvsimError(
            f"kvsim {what} needs the kernels extra: pip install -e '.[kernels]' (torch, triton)"
        ) from None


def _calibrate(args) -> int:
    from kvsim.calibration.grids import grid

    from .catalog import get_model

    model = get_model(args.model, Path.cwd())
    ops = [o.strip() for o in args.ops.split(",")] if args.ops else None
    points = grid(model, args.tp, full=not args.tiny)
    if ops:
        unknown = sorted(set(ops) - set(points))
        if unknown:
            raise KvsimError(f"--ops: unknown op {unknown[0]!r}; allowed: {', '.join(points)}")
        points = {k: v for k, v in points.items() if k in ops}
    if args.dry_run:
        total = sum(len(v) for v in points.values())
        print(f"calibration grid for {model.name} (TP{args.tp}{', tiny' if args.tiny else ''}):")
        for op, pts in points.items():
            keys = sorted({k for p in pts for k in p if isinstance(p[k], (int, float))})
            spans = ", ".join(
                f"{k} {min(p[k] for p in pts)}–{max(p[k] for p in pts)}" for k in keys
            )
            print(f"  {op:12} {len(pts):4} points  {spans}")
        from kvsim.calibration.grids import estimate_seconds

        print(f"{total} points; expected about {estimate_seconds(points) / 60:.0f} min on a GPU")
        return 0
    _kernels_needed("calibrate")
    from kvsim.calibration.measure import calibrate, device_meta, require_device

    require_device()
    meta = device_meta()
    slug = "".join(c if c.isalnum() else "-" for c in meta["device"].lower()).strip("-")
    out = Path(args.out) if args.out else Path("calibration/profiles") / f"{slug}-{model.name}"
    print(f"calibrating {model.name} on {meta['device']} → {out}/")
    calibrate(model, args.tp, out, full=not args.tiny, ops=ops, **_limits(args))
    print(f"wrote {out}/measurements.csv and {out}/profile.yaml")
    return 0


def _limits(args) -> dict:
    return {"max_mape": args.max_mape, "max_error": args.max_error,
            "accept_error": args.accept_error, "show": _print_fits}  # fmt: skip


def _print_fits(profile: dict) -> None:
    from .latency.profile import heldout_excess

    q = profile["quality"]
    print(f"  {'op':12} {'points':>6} {'held-out MAPE':>14} {'worst':>8}")
    for op, e in profile["ops"].items():
        mape, worst = e["heldout_mape"], e["heldout_max_error"]
        above = heldout_excess(mape, worst, q["max_heldout_mape"], q["max_heldout_error"])
        mark = ("  accepted above the limits" if op in q["accepted"] else "  ABOVE THE LIMITS") \
            if above else ""  # fmt: skip
        print(f"  {op:12} {e['points']:>6} {mape:>14.1%} {worst:>8.1%}{mark}")


def _fit(args) -> int:
    from kvsim.calibration.fit import fit_file

    fit_file(args.measurements, args.out, **_limits(args))
    print(f"wrote {args.out}")
    return 0


def _policy_dirs(args) -> tuple[str, ...]:
    for d in args.policy_path:
        try:
            ok = Path(d).is_dir()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise KvsimError(f"--policy-path {clip(repr(d), 120)}: not a folder")
    return tuple(args.policy_path)


def _load(args):
    from .scenario import load_scenario

    return load_scenario(
        args.scenario, args.overrides, _policy_dirs(args), hardware_files=_hardware(args)
    )


def _hardware(args) -> tuple[str, ...]:
    """The --hardware-file paths, absolute (workers may run in other folders)."""
    return tuple(str(Path(f).absolute()) for f in args.hardware_files)


def _cluster(scenario, on_done=None):
    """The scenario's cluster, built as a run builds it; an error about the scenario (its
    policies, its model's fit, its KV capacity) names the scenario file, one about the latency
    profile names the profile."""
    from .cluster import Cluster

    try:
        return Cluster(scenario, on_done)
    except KvsimError as e:
        msg = str(e)
        own = scenario.latency.type == "profile" and msg.startswith(str(scenario.profile_path()))
        if own or msg.startswith(scenario.source):
            raise
        raise KvsimError(f"{scenario.source}: {msg}") from None


def _temp_files_failed(e: OSError) -> KvsimError:
    return KvsimError(
        f"writing the run's temporary files failed ({e.strerror or e}); free space in "
        f"{tempfile.gettempdir()} or point TMPDIR elsewhere"
    )


def _run(args) -> int:
    from kvsim.traces import TraceError

    from .cluster import expected_requests
    from .output import ResultsFolder, summary_json
    from .progress import ProgressBar

    scenario = _load(args)
    if args.exact_steps:
        scenario.simulation.exact_steps = True
    out = Path(args.out) if args.out else Path("runs") / scenario.name
    # The destination is checked (and its staging folder made) before anything is simulated.
    with ResultsFolder(out, force=args.force) as folder:
        enabled = not args.no_progress and sys.stderr.isatty()
        bar = ProgressBar(expected_requests(scenario) if enabled else None, enabled=enabled)
        try:
            results = _cluster(scenario, bar.update).run()
        except TraceError as e:
            raise KvsimError(str(e)) from None
        except OSError as e:  # the trace's own read errors are TraceErrors
            raise _temp_files_failed(e) from None
        wall = bar.close()
        out = folder.commit(scenario, results)
    note = ""
    if folder.relocated:
        note = f"; {folder.requested}/ held an earlier run (kept; --force replaces it)"
    if args.json:
        print(f"results: {out}/{note}", file=sys.stderr)
        sys.stdout.write(summary_json(results))
        return 0
    n = results.summary["requests"]
    warmup = results.summary.get("warmup_requests", 0)
    total = n + warmup
    measured = f" ({n} measured after {warmup} warm-up requests)" if warmup else ""
    print(
        f"kvsim: {scenario.name}: {total} requests simulated in {wall:.1f} s wall "
        f"({total / wall if wall > 0 else 0:,.0f} requests/s){measured}"
    )
    print(results.table())
    extrapolated = results.summary.get("latency_extrapolated")
    if extrapolated:
        print(f"warning: latency profile used outside its measured ranges: {extrapolated}")
    print(
        f"results: {out}/ (summary.json, requests.csv, timeseries.csv, report.html, "
        f"scenario.resolved.yaml){note}"
    )
    return 0


def _sweep(args) -> int:
    from .sweep import load_sweep, run_sweep
    from .sweep.table import terminal_table

    sweep = load_sweep(args.sweep)
    if args.ray_address and args.executor != "ray":
        raise KvsimError("--ray-address: only with --executor ray")
    policy_path = _policy_dirs(args)
    out = Path(args.out) if args.out else Path("runs") / sweep.name
    try:
        run = run_sweep(
            sweep,
            out,
            executor=args.executor,
            workers=args.workers,
            ray_address=args.ray_address,
            force=args.force,
            progress=not args.no_progress and sys.stderr.isatty(),
            policy_path=policy_path,
            hardware_files=_hardware(args),
        )
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, _Terminated) else "interrupted"
        if hasattr(e, "points_done"):
            done = f"{e.points_done} of {e.points_total} points done in {out}/ (the same command "
            done += "resumes)"
        else:
            done = "no points run"
        print(f"kvsim: {what}; {done}", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    marks = {i: "ran" for i in run.ran} | {i: "reused" for i in run.reused}
    print(
        f"kvsim: sweep {sweep.name}: {len(sweep.points)} points over {sweep.base} "
        f"({len(run.ran)} ran, {len(run.reused)} reused)"
    )
    print(terminal_table(run.table, marks))
    print(f"results: {out}/ (results.csv, results.parquet, report.html, points/)")
    return 0


def _plan(args) -> int:
    import os

    from .output import ResultsFolder
    from .plan import Question, parse_slo, run_plan
    from .plan.report import FILES, csv_text, json_text, report_html, terminal_text
    from .plan.search import PROBES
    from .plan.slo import default_slo

    scenario = _load(args)
    slo = parse_slo(args.slo) if args.slo else default_slo(scenario)
    question = Question(
        Path(args.scenario), slo, args.rate, args.replicas, tuple(args.overrides),
        _policy_dirs(args), args.max_replicas, args.tolerance, hardware_files=_hardware(args),
    )  # fmt: skip
    workers = min(args.workers or os.cpu_count() or 1, PROBES)
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-plan"
    # The destination is checked before anything is simulated.
    with ResultsFolder(out, args.force, FILES) as folder:
        progress = not args.no_progress and sys.stderr.isatty()
        plan = run_plan(question, workers, progress)
        files = {"plan.csv": csv_text(plan).encode(), "plan.json": json_text(plan).encode(),
                 "report.html": report_html(plan).encode()}  # fmt: skip
        out = folder.commit_files(files)
    print(f"kvsim: plan {scenario.name}")
    print(terminal_text(plan))
    print(f"results: {out}/ (plan.csv, plan.json, report.html)")
    return 0


def _compare(args) -> int:
    from .compare import FILES, csv_text, load_run, report_html, terminal_text
    from .output import ResultsFolder

    if len(args.runs) < 2:
        raise KvsimError("compare: give at least two run folders (the first is the reference)")
    runs = [load_run(folder, i) for i, folder in enumerate(args.runs)]
    files = {"compare.csv": csv_text(runs).encode(), "report.html": report_html(runs).encode()}
    with ResultsFolder(args.out or Path("runs") / "compare", args.force, FILES) as folder:
        out = folder.commit_files(files)
    print(terminal_text(runs, out))
    return 0


def _validate(args) -> int:
    """The checks ``run`` makes before it simulates: the scenario, the cluster built (policies
    instantiated, KV capacity, latency profile) and the workload's first requests read and
    checked as arrivals."""
    from kvsim.traces import TraceError

    s = _load(args)
    try:
        cluster = _cluster(s)
        rows = cluster.check_workload(VALIDATE_ROWS)
    except TraceError as e:
        raise KvsimError(str(e)) from None
    except OSError as e:
        raise _temp_files_failed(e) from None
    pools = "; ".join(
        f"{'' if p.role == 'unified' else p.name + ': '}{p.model.name} on "
        f"{p.spec.replicas}× {p.gpu.name} TP{p.spec.tensor_parallel}, {p.capacity} KV blocks of "
        f"{p.spec.cache.block_size} tokens per replica"
        for p in cluster.pools
    )
    print(f"{args.scenario}: valid ({pools}; first {rows} requests checked)")
    return 0


def _schema(args) -> int:
    from .scenario import Scenario

    print(json.dumps(Scenario.model_json_schema(), indent=2))
    return 0


def _trace_stats(args) -> int:
    from kvsim.traces import TraceError, read_trace, trace_stats
    from kvsim.traces.readers import guess_format

    try:
        fmt = args.format or guess_format(args.file)
        stats = trace_stats(read_trace(args.file, fmt))
    except TraceError as e:
        raise KvsimError(str(e)) from None
    print(f"{args.file} ({fmt})")
    for k, v in stats.rows():
        print(f"  {k:38} {v}")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as for SIGINT (Ctrl-C)."""


def _on_sigterm(signum, frame):
    raise _Terminated


def _error_line(e: KvsimError) -> str:
    """The error as one line, whatever a message from deep inside held."""
    return clip(" ".join(str(e).splitlines()), MAX_ERROR_CHARS)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except KvsimError as e:
        print(f"kvsim: error: {_error_line(e)}", file=sys.stderr)
        return 2
    handlers = {
        "run": _run,
        "sweep": _sweep,
        "compare": _compare,
        "plan": _plan,
        "validate": _validate,
        "schema": _schema,
        "trace": _trace_stats,
        "calibrate": _calibrate,
        "fit": _fit,
    }
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        return handlers[args.command](args)
    except KvsimError as e:
        print(f"kvsim: error: {_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, _Terminated) else "interrupted"
        written = getattr(e, "results_written", None)
        done = f"results written to {written}/" if written else "no results written"
        print(f"kvsim: {what}; {done}", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
