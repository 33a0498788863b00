"""The sweep report: curves and Pareto fronts over the results table, as one HTML page.

Self-contained (plotly.js embedded, as in the run report), SVG traces only (``go.Scatter``, no
WebGL), deterministic bytes (fixed element ids). A ``curve`` chart draws y against x, one line
per series value, points in order of x. A ``pareto`` chart draws every point faintly and, per
series, its Pareto-optimal points (non-dominated: no other point is at least as good in both x and
y and better in one; both minimised unless ``maximize_x``/``maximize_y``) joined as a staircase,
the boundary of the region they dominate. Without ``plots`` in the sweep file: one curve per
numeric override column against ``ttft_s.p99``, a line per combination of the other overrides.
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from ..errors import KvsimError, echo
from .spec import Plot, Sweep
from .table import Table, cell_text, column_kind

DEFAULT_Y = "ttft_s.p99"
FAINT = "rgba(120,120,120,0.35)"


def pareto_front(
    xs: list[float], ys: list[float], maximize_x: bool = False, maximize_y: bool = False
) -> list[int]:
    """Indices of the non-dominated points, in order of x (ties: by index).

    Point p is dominated when some q is at least as good as p in x and in y and better in one;
    equal points dominate neither each other, so both stay on the front."""
    sx, sy = (-1 if maximize_x else 1), (-1 if maximize_y else 1)
    order = sorted(range(len(xs)), key=lambda i: (sx * xs[i], sy * ys[i], i))
    front: list[int] = []
    best = math.inf  # best (minimised) y among points with strictly better x
    k = 0
    while k < len(order):
        a = sx * xs[order[k]]
        group = []
        while k < len(order) and sx * xs[order[k]] == a:
            group.append(order[k])
            k += 1
        b = sy * ys[group[0]]  # the group's best y (sorted)
        if b < best:
            front.extend(i for i in group if sy * ys[i] == b)
            best = b
    return sorted(front, key=lambda i: (xs[i], i))


def staircase(
    points: list[tuple[float, float]], maximize_x: bool = False
) -> list[tuple[float, float]]:
    """The vertices of the staircase through front points given in order of x: between two
    points, the corner at the worse x and the worse y of the two (the dominated region's edge).

    Whether y is maximised does not change the corner: along a front in order of x, y improves
    exactly when x gets worse, whichever way each is counted."""
    out: list[tuple[float, float]] = []
    for p in points:
        if out:
            prev = out[-1]
            corner = (prev[0], p[1]) if maximize_x else (p[0], prev[1])
            if corner != prev:
                out.append(corner)
        if not out or p != out[-1]:
            out.append(p)
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _label(row: dict, columns: list[str]) -> str:
    if len(columns) == 1:
        v = row.get(columns[0])
        return "(none)" if v is None else cell_text(v)
    return ", ".join(f"{c}={cell_text(row.get(c)) or '(none)'}" for c in columns)


def _hover(row: dict, inputs: list[str]) -> str:
    lines = [f"point {row['point']}"] + [f"{c}={cell_text(row[c])}" for c in inputs if c in row]
    return "<br>".join(html.escape(s) for s in lines)


def _groups(rows: list[dict], series: list[str]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(_label(row, series) if series else "", []).append(row)
    return groups


def _figure(plot: Plot, series: list[str], rows: list[dict], leaves: list[str]) -> go.Figure:
    fig = go.Figure()
    numeric_x = column_kind([r.get(plot.x) for r in rows]) in ("int", "float")
    numeric_x = numeric_x or plot.kind == "pareto"  # a front needs numbers on both axes
    usable = [
        r for r in rows
        if r.get(plot.y) is not None and _number(r[plot.y]) is not None
        and r.get(plot.x) is not None and (not numeric_x or _number(r[plot.x]) is not None)
    ]  # fmt: skip
    if plot.kind == "pareto":
        fig.add_trace(go.Scatter(
            x=[r[plot.x] for r in usable], y=[r[plot.y] for r in usable], mode="markers",
            marker={"color": FAINT, "size": 7}, name="all points",
            text=[_hover(r, leaves) for r in usable], hoverinfo="x+y+text",
        ))  # fmt: skip
    for i, (name, group) in enumerate(_groups(usable, series).items()):
        color = pio.templates["plotly_white"].layout.colorway[i % 10]
        if plot.kind == "pareto":
            xs = [_number(r[plot.x]) for r in group]
            front = [group[k] for k in pareto_front(xs, [_number(r[plot.y]) for r in group],
                                                    plot.maximize_x, plot.maximize_y)]  # fmt: skip
            stairs = staircase([(r[plot.x], r[plot.y]) for r in front], plot.maximize_x)
            fig.add_trace(go.Scatter(
                x=[p[0] for p in stairs], y=[p[1] for p in stairs], mode="lines",
                line={"color": color}, legendgroup=name, showlegend=False, hoverinfo="skip",
            ))  # fmt: skip
            group = front
            mode = "markers"
        else:
            if numeric_x:
                group = sorted(group, key=lambda r: (r[plot.x], r["point"]))
            mode = "lines+markers"
        fig.add_trace(go.Scatter(
            x=[r[plot.x] for r in group], y=[r[plot.y] for r in group], mode=mode,
            name=name or plot.y, legendgroup=name, marker={"color": color, "size": 8},
            line={"color": color}, text=[_hover(r, leaves) for r in group],
            hoverinfo="x+y+text",
        ))  # fmt: skip
    kind = "Pareto front" if plot.kind == "pareto" else "curve"
    by = f" by {', '.join(series)}" if series else ""
    fig.update_layout(
        title=plot.title or f"{plot.y} vs {plot.x}{by} ({kind})", template="plotly_white",
        height=460, margin={"t": 60, "b": 50}, legend={"title": {"text": ", ".join(series)}},
        xaxis={"title": {"text": plot.x}, "type": "log" if plot.log_x else None},
        yaxis={"title": {"text": plot.y}, "type": "log" if plot.log_y else None},
    )  # fmt: skip
    return fig


def default_plots(table: Table) -> list[tuple[Plot, list[str]]]:
    """One curve per numeric override column that varies, against ttft_s.p99, a line per
    combination of the other varying override columns."""
    varying = table.varying()
    numeric = [
        c for c in varying if column_kind([r.get(c) for r in table.rows]) in ("int", "float")
    ]
    xs = numeric or varying[:1] or ["point"]
    return [(Plot(x=x, y=DEFAULT_Y), [c for c in varying if c != x]) for x in xs]


def _check_columns(sweep: Sweep, columns: list[str]) -> None:
    known = set(columns)
    for i, plot in enumerate(sweep.plots or ()):
        for field in ("x", "y", "series"):
            name = getattr(plot, field)
            if name is not None and name not in known:
                shown = ", ".join(columns[:12]) + (", …" if len(columns) > 12 else "")
                raise KvsimError(
                    f"{sweep.path}: plots[{i}].{field}: {echo(name)} is not allowed: not a "
                    "column of the results table (results.csv is written; finished points are "
                    f"reused when run again); columns: {shown}"
                )


def _cell(v: Any) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.6g}"
    return html.escape(cell_text(v))


def report_html(sweep: Sweep, table: Table) -> str:
    """The sweep report as one HTML document; raises :class:`KvsimError` for a plot that names
    no column of the table."""
    columns, rows = table.columns, table.rows
    _check_columns(sweep, columns)
    if sweep.plots is not None:
        plots = [(p, [p.series] if p.series else []) for p in sweep.plots]
    else:
        plots = default_plots(table) if DEFAULT_Y in columns else []
    leaves = table.leaves()
    charts = []
    for i, (plot, series) in enumerate(plots):
        fig = _figure(plot, series, rows, leaves)
        div = pio.to_html(fig, full_html=False, include_plotlyjs=i == 0,
                          div_id=f"kvsim-sweep-{i}", config={"displaylogo": False})  # fmt: skip
        charts.append(div)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    title = html.escape(sweep.name)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>kvsim sweep · {title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        ".results{overflow-x:auto}table{border-collapse:collapse;font-size:.85em}"
        "th,td{padding:.2em .6em;text-align:left;border-bottom:1px solid #ddd;"
        "white-space:nowrap}th{font-weight:600}</style></head><body>"
        f"<h1>kvsim sweep · {title}</h1>"
        f"<p>{len(rows)} points over {html.escape(sweep.base.name)}; "
        "every row is also in results.csv and results.parquet, and each point's own report is "
        "in its folder.</p>"
        f"{''.join(charts)}<h2>Results</h2><div class='results'><table><tr>{head}</tr>{body}"
        "</table></div></body></html>\n"
    )
