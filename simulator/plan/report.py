"""What a plan writes: the table of points tried (terminal and plan.csv), plan.json (the question,
the answer, every point's summary) and report.html — each SLO metric against the searched knob
with its limit and the answer marked, so the page shows *why* the answer is what it is.
"""

from __future__ import annotations

import html
import json
import math

from ..figures import figure, scatter
from ..pages import charts, grid_csv, grid_table, page
from .planner import Plan, _rate_text, answer_lines

FILES = ("plan.csv", "plan.json", "report.html")
EXTRA = (
    ("throughput.requests_per_s", "throughput (req/s)"),
    ("slo.goodput_requests_per_s", "goodput (req/s)"),
    ("utilisation", "utilisation"),
    ("saturated_fraction", "saturated"),
    ("queue_s.p99", "queue p99 (s)"),
    ("dropped", "dropped"),
)
OK, FAIL = "#2ca02c", "#d62728"


def _get(summary: dict, dotted: str):
    v = summary
    for k in dotted.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(plan: Plan) -> tuple[list[str], list[list[str]]]:
    """Header and one row per point, in the order tried."""
    q = plan.question
    knob = "replicas" if q.knob == "replicas" else "rate (req/s)"
    header = ["point", "round", knob]
    if plan.pools is not None:
        header += [plan.pools.prefill, plan.pools.decode]
    header += ["GPUs", "meets"]
    header += [t.name for t in q.slo] + [label for _, label in EXTRA] + ["why not"]
    rows = []
    for p in plan.points:
        value = str(p.value) if q.knob == "replicas" else _rate_text(p.value)
        row = [str(p.index), str(p.round + 1), value]
        if p.split is not None:
            row += [str(p.split[0]), str(p.split[1])]
        row += [str(plan.gpus(p)), "yes" if p.meets else "no"]
        row += [_num(_get(p.summary, t.name)) for t in q.slo]
        row += [_num(_get(p.summary, key)) for key, _ in EXTRA]
        rows.append(row + ["; ".join(p.reasons)])
    return header, rows


def terminal_text(plan: Plan) -> str:
    header, rows = table(plan)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = answer_lines(plan)
    for row in [header, *rows]:
        cells = (c.ljust(w) if j in (0, len(row) - 1) else c.rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths, strict=True)))  # fmt: skip
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def csv_text(plan: Plan) -> str:
    return grid_csv(*table(plan))


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def json_text(plan: Plan) -> str:
    q, o = plan.question, plan.outcome
    doc = {
        "scenario": str(q.scenario),
        "overrides": list(q.overrides),
        "question": "fewest_replicas" if q.knob == "replicas" else "highest_rate",
        "rate": plan.rate,
        "replicas": q.replicas,
        "slo": [
            {"metric": t.metric, "statistic": t.statistic, "limit_s": t.limit_s} for t in q.slo
        ],  # fmt: skip
        "tolerance": q.tolerance if q.knob == "rate" else None,
        "trace_mean_rate": plan.trace_rate,
        "answer": o.answer,
        "bracket": [o.lo, o.hi],
        "monotone": o.monotone,
    }
    if plan.pools is not None:
        chosen = plan.point(o.answer) if o.answer is not None else None
        doc["pools"] = {"prefill": plan.pools.prefill, "decode": plan.pools.decode}
        doc["split"] = None if chosen is None else {"prefill": chosen.split[0],
                                                    "decode": chosen.split[1],
                                                    "gpus": plan.gpus(chosen)}  # fmt: skip
    doc["points"] = [
        {"index": p.index, "round": p.round + 1, q.knob: p.value,
         **({} if p.split is None else {"prefill": p.split[0], "decode": p.split[1]}),
         "gpus": plan.gpus(p), "overrides": list(p.overrides), "meets": p.meets,
         "reasons": p.reasons, "summary": p.summary}
        for p in plan.points
    ]  # fmt: skip
    return json.dumps(_clean(doc), indent=2) + "\n"


def _chart(plan: Plan, key: str, title: str, limit: float | None) -> dict:
    q = plan.question
    x_title = "replicas" if q.knob == "replicas" else "requests per second"
    fig = figure(title, x_title, key, log_x=q.knob == "rate")
    pts = sorted(plan.points, key=lambda p: p.value)
    xs = [p.value for p in pts]
    ys = [_get(p.summary, key) for p in pts]
    ys = [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in ys]
    fig["data"].append(scatter(x=xs, y=ys, mode="lines", line={"color": "#999"},
                               name="points tried", hoverinfo="skip"))  # fmt: skip
    for ok, name in ((True, "meets the SLO"), (False, "fails")):
        sel = [p for p in pts if p.meets == ok]
        fig["data"].append(scatter(
            x=[p.value for p in sel], y=[_get(p.summary, key) for p in sel], mode="markers",
            marker={"color": OK if ok else FAIL, "size": 9}, name=name,
            text=[f"point {p.index} (round {p.round + 1})" for p in sel],
        ))  # fmt: skip
    # Lines as traces, not shapes: a shape's position on a log axis is in log10 units.
    finite = [v for v in ys if v is not None]
    if limit is not None:
        fig["data"].append(scatter(x=[xs[0], xs[-1]], y=[limit, limit], mode="lines",
                                   line={"dash": "dash", "color": FAIL}, name="limit"))  # fmt: skip
        finite.append(limit)
    if plan.outcome.answer is not None and finite:
        a = plan.outcome.answer
        fig["data"].append(scatter(x=[a, a], y=[min(finite), max(finite)], mode="lines",
                                   line={"dash": "dot", "color": OK}, name="answer"))  # fmt: skip
    return fig


def _split_chart(plan: Plan, key: str, title: str, limit: float | None) -> dict:
    """``key`` against the prefill replicas, a line per total: which splits of each total meet,
    and the chosen one."""
    pools = plan.pools
    fig = figure(title, f"{pools.prefill} replicas (the rest {pools.decode})", key)
    totals = sorted({p.value for p in plan.points})
    finite = []
    for n in totals:
        pts = sorted((p for p in plan.points if p.value == n), key=lambda p: p.split)
        ys = [_get(p.summary, key) for p in pts]
        ys = [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
              for v in ys]  # fmt: skip
        finite += [v for v in ys if v is not None]
        fig["data"].append(scatter(
            x=[p.split[0] for p in pts], y=ys, mode="lines+markers", name=f"{n} replicas",
            line={"width": 3 if n == plan.outcome.answer else 1},
            marker={"color": [OK if p.meets else FAIL for p in pts], "size": 8},
            text=[f"point {p.index}: {p.split[0]}:{p.split[1]}, "
                  f"{'meets' if p.meets else 'fails'}" for p in pts],
        ))  # fmt: skip
    xs = [p.split[0] for p in plan.points]
    if limit is not None:
        fig["data"].append(scatter(x=[min(xs), max(xs)], y=[limit, limit], mode="lines",
                                   line={"dash": "dash", "color": FAIL}, name="limit"))  # fmt: skip
        finite.append(limit)
    chosen = plan.point(plan.outcome.answer) if plan.outcome.answer is not None else None
    if chosen is not None and finite:
        a = chosen.split[0]
        fig["data"].append(scatter(x=[a, a], y=[min(finite), max(finite)], mode="lines",
                                   line={"dash": "dot", "color": OK},
                                   name=f"answer {chosen.split[0]}:{chosen.split[1]}"))  # fmt: skip
    return fig


def plan_figures(plan: Plan) -> list[tuple[str, dict]]:
    """The plan report's charts, (element id, figure) in page order: each SLO metric, then
    goodput and utilisation, against the searched knob (or the split)."""
    q = plan.question
    chart = _chart if plan.pools is None else _split_chart
    figs = [(f"kvsim-plan-{i}", chart(plan, t.name, f"{t.name} (limit {t.limit_s:g} s)",
                                      t.limit_s))
            for i, t in enumerate(q.slo)]  # fmt: skip
    n = len(figs)
    figs += [
        (f"kvsim-plan-{n}", chart(plan, "slo.goodput_requests_per_s", "goodput (req/s)", None)),
        (f"kvsim-plan-{n + 1}", chart(plan, "utilisation", "utilisation", None)),
    ]
    return figs


def report_html(plan: Plan) -> str:
    q = plan.question
    figs = plan_figures(plan)
    header, rows = table(plan)
    lines = answer_lines(plan)
    body = (
        "<h2>Answer</h2>" + f"<pre>{html.escape(chr(10).join(lines))}</pre>"
        + "<h2>Why</h2>" + charts(figs)
        + "<h2>Points tried</h2>" + grid_table(header, rows, numeric=set(range(1, len(header) - 1)))
    )  # fmt: skip
    return page(f"kvsim plan · {q.scenario.name}", body)
