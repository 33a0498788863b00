"""``kvsim compare RUN_A RUN_B …``: runs side by side, with what differs and by how much.

The first run is the reference. The terminal table and ``compare.csv`` list each headline metric
of every run and, for every other run, its difference from the reference, absolute and relative
(``(B − A) / A``; empty where A is 0 or a value is missing). Above it, the scenario fields whose
values differ between the runs (their ``scenario.resolved.yaml`` files, flattened with dots).
``report.html`` overlays the runs: the latency CDFs (TTFT, TPOT, E2E, queueing delay), each run's
SLO, and the queues and KV use over time.

Bounded memory: a run's requests.csv is read as a stream into the log-binned histograms of
``digest`` (so a 1M-request run costs the same as a small one); timeseries.csv is bounded by
construction.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .digest import LOG_BINS, cdf_points, log_bin
from .errors import KvsimError, clip
from .figures import colorway, figure, scatter
from .pages import charts, grid_csv, grid_table, page

FILES = ("compare.csv", "report.html")
LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E latency"),
             ("queue_s", "Queueing delay"))  # fmt: skip
_CHUNK = 65536

# (label, path in summary.json, how shown): ms (seconds shown in ms), pct, num, rate
METRICS = [
    ("requests", ("requests",), "num"),
    ("finished", ("finished",), "num"),
    ("dropped", ("dropped",), "num"),
    *[(f"{name} {p} (ms)", (key, p), "ms")
      for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E"),
                        ("queue_s", "queueing delay"))
      for p in ("p50", "p90", "p99")],
    ("throughput (req/s)", ("throughput", "requests_per_s"), "rate"),
    ("output tokens/s", ("throughput", "output_tokens_per_s"), "rate"),
    ("goodput (req/s)", ("slo", "goodput_requests_per_s"), "rate"),
    ("SLO attainment", ("slo", "attainment"), "pct"),
    ("prefix-hit ratio", ("prefix_hit_ratio",), "pct"),
    ("preemptions", ("preemptions",), "num"),
    ("GPUs", ("gpus",), "num"),
    ("utilisation", ("utilisation",), "pct"),
    ("saturated time", ("saturated_fraction",), "pct"),
    ("KV cache use (mean)", ("kv_use", "mean"), "pct"),
]  # fmt: skip


@dataclass
class Run:
    """One run folder as ``kvsim run`` wrote it."""

    folder: Path
    label: str
    """A, B, C, …"""
    summary: dict
    scenario: dict
    """Its scenario.resolved.yaml ({} if absent)."""


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"


def load_run(folder: str | Path, index: int) -> Run:
    """Read a run folder; a folder that is not one is a one-line error."""
    folder = Path(folder)
    where = clip(str(folder), 200)
    if not folder.is_dir():
        raise KvsimError(f"{where}: not a folder (a run's results folder, as kvsim run writes)")
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KvsimError(f"{where}: no summary.json (not a kvsim run folder)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise KvsimError(f"{where}/summary.json: unreadable ({type(e).__name__})") from None
    if not isinstance(summary, dict):
        raise KvsimError(f"{where}/summary.json: not a run summary (a JSON object)")
    scenario: dict = {}
    try:
        loaded = yaml.safe_load((folder / "scenario.resolved.yaml").read_text(encoding="utf-8"))
        scenario = loaded if isinstance(loaded, dict) else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    return Run(folder, _letter(index), summary, scenario)


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
        return None
    return d


def _show(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "ms":
        return f"{v * 1e3:.1f}"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "rate":
        return f"{v:.2f}"
    return f"{v:g}"


def _diff(a, b, kind: str) -> tuple[str, str]:
    """(absolute, relative) difference of b from a, as shown."""
    if a is None or b is None:
        return "-", "-"
    d = b - a
    if kind == "ms":
        absolute = f"{d * 1e3:+.1f}"
    elif kind == "pct":
        absolute = f"{d * 100:+.1f} pt"
    elif kind == "rate":
        absolute = f"{d:+.2f}"
    else:
        absolute = f"{d:+g}"
    relative = f"{d / a:+.1%}" if a != 0 else "-"
    return absolute, relative


def metric_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: metric, each run's value, and each other run's difference from the
    first (absolute, relative)."""
    ref = runs[0]
    header = ["metric"] + [r.label for r in runs]
    for r in runs[1:]:
        header += [f"{r.label} − {ref.label}", f"{r.label} vs {ref.label}"]
    rows = []
    for label, path, kind in METRICS:
        values = [_get(r.summary, path) for r in runs]
        if all(v is None for v in values):
            continue
        row = [label] + [_show(v, kind) for v in values]
        for v in values[1:]:
            row += list(_diff(values[0], v, kind))
        rows.append(row)
    return header, rows


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def scenario_differences(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """The resolved scenario fields whose values differ between the runs."""
    flat = []
    for r in runs:
        d: dict = {}
        _flatten("", r.scenario, d)
        flat.append(d)
    keys = list(dict.fromkeys(k for d in flat for k in d))
    out = []
    for k in keys:
        values = [d.get(k, "(absent)") for d in flat]
        texts = [v if isinstance(v, str) else json.dumps(v) for v in values]
        if len(set(texts)) > 1:
            out.append((k, texts))
    return out


def terminal_text(runs: list[Run], folder: Path) -> str:
    """What ``kvsim compare`` prints."""
    lines = [f"kvsim: compare {len(runs)} runs"]
    lines += [f"  {r.label}: {r.folder}/" for r in runs]
    diffs = scenario_differences(runs)
    if diffs:
        lines.append("scenario differences:")
        width = max(len(k) for k, _ in diffs)
        for k, texts in diffs:
            values = (f"{r.label}={clip(t, 40)}" for r, t in zip(runs, texts, strict=True))
            lines.append(f"  {k:{width}}  " + "  ".join(values))
    else:
        lines.append("scenario differences: none")
    header, rows = metric_table(runs)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                       strict=True)]  # fmt: skip
        lines.append("  ".join(cells))
    lines.append(f"results: {folder}/ (compare.csv, report.html)")
    return "\n".join(lines)


def csv_text(runs: list[Run]) -> str:
    return grid_csv(*metric_table(runs))


def latency_histograms(folder: Path) -> dict[str, np.ndarray]:
    """Log-binned histograms of each latency column of a run's requests.csv, read as a stream
    (columns a run does not have are left out)."""
    hist = {}
    path = folder / "requests.csv"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            cols = {m: header.index(m) for m, _ in LATENCIES if m in header}
            hist = {m: np.zeros(LOG_BINS, np.int64) for m in cols}
            while True:
                chunk = [row for _, row in zip(range(_CHUNK), reader, strict=False)]
                if not chunk:
                    break
                for m, j in cols.items():
                    v = np.array([float(r[j]) for r in chunk if len(r) > j and r[j] != ""])
                    hist[m] += np.bincount(log_bin(v), minlength=LOG_BINS)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise KvsimError(f"{clip(str(path), 200)}: unreadable ({type(e).__name__})") from None
    return hist


def _series(folder: Path, summary: dict) -> dict[str, np.ndarray] | None:
    """Waiting requests and KV use over time from a run's timeseries.csv (summed over
    replicas), or None without one."""
    path = folder / "timeseries.csv"
    if not path.is_file():
        return None
    times: dict[str, list[int]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                acc = times.setdefault(row["time_s"], [0, 0, 0])
                acc[0] += int(row["waiting"])
                acc[1] += int(row.get("kv_blocks_used") or 0)
                acc[2] += 1
    except (OSError, UnicodeDecodeError, ValueError, KeyError, csv.Error) as e:
        raise KvsimError(f"{clip(str(path), 200)}: unreadable ({type(e).__name__})") from None
    t = np.array([float(k) for k in times])
    v = np.array(list(times.values()), dtype=np.float64).reshape(-1, 3)
    blocks = _get(summary, ("kv_blocks_per_replica",))
    kv = v[:, 1] / (blocks * v[:, 2]) if blocks else np.full(len(t), np.nan)
    return {"time_s": t, "waiting": v[:, 0], "kv_use": kv}


def overlay_figures(runs: list[Run]) -> list[tuple[str, dict]]:
    """The overlay report's charts, (element id, figure) in page order."""
    colors = colorway()
    hists = [latency_histograms(r.folder) for r in runs]
    figs = []
    for metric, title in LATENCIES:
        fig = figure(f"{title} (CDF)", "seconds", "share of requests", log_x=True)
        for i, (r, h) in enumerate(zip(runs, hists, strict=True)):
            if metric not in h or not h[metric].any():
                continue
            x, y = cdf_points(h[metric])
            fig["data"].append(scatter(x=x, y=y, mode="lines",
                                       line={"shape": "hv", "color": colors[i % 10]},
                                       name=f"{r.label}: {r.folder.name}"))  # fmt: skip
            slo = _get(r.summary, ("slo", metric))
            if slo is not None:
                fig["data"].append(scatter(x=[slo, slo], y=[0, 1], mode="lines",
                                           line={"dash": "dash", "color": colors[i % 10]},
                                           name=f"{r.label} SLO"))  # fmt: skip
        fig["layout"]["yaxis"]["range"] = [0, 1.02]
        figs.append((f"kvsim-compare-{metric.removesuffix('_s')}", fig))
    series = [_series(r.folder, r.summary) for r in runs]
    for key, title, y in (("waiting", "Requests waiting (all replicas)", "requests"),
                          ("kv_use", "KV cache use", "share of KV blocks")):  # fmt: skip
        fig = figure(title, "time (s)", y)
        for i, (r, ser) in enumerate(zip(runs, series, strict=True)):
            if ser is None or np.isnan(ser[key]).all():
                continue
            fig["data"].append(scatter(x=ser["time_s"], y=ser[key], mode="lines",
                                       line={"shape": "hv", "color": colors[i % 10]},
                                       name=f"{r.label}: {r.folder.name}"))  # fmt: skip
        figs.append((f"kvsim-compare-{key.replace('_', '-')}", fig))
    return figs


def report_html(runs: list[Run]) -> str:
    """The overlay report."""
    figs = overlay_figures(runs)
    header, rows = metric_table(runs)
    diffs = scenario_differences(runs)
    runs_table = grid_table(["run", "folder"], [[r.label, str(r.folder)] for r in runs])
    diff_table = (grid_table(["field"] + [r.label for r in runs], [[k, *t] for k, t in diffs])
                  if diffs else "<p>none</p>")  # fmt: skip
    body = (
        "<h2>Runs</h2>" + runs_table + "<h2>Scenario differences</h2>" + diff_table
        + "<h2>Metrics</h2>" + grid_table(header, rows, numeric=set(range(1, len(header))))
        + "<h2>Overlays</h2>" + charts(figs)
    )  # fmt: skip
    return page(f"kvsim compare · {' vs '.join(r.folder.name for r in runs)}", body)
