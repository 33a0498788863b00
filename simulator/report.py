"""A self-contained HTML report of one run (plotly, deterministic: fixed element ids).

What a serving engineer looks at first: the latency distributions against the SLO (CDFs of TTFT,
TPOT, E2E), whether latency drifts over the run (TTFT by arrival time: queueing shows as a ramp),
throughput over time, how the prefix cache and preemptions behave over time, and the queues
(waiting and running requests over time, summed over replicas: overload shows as a waiting queue
that only grows). With links (a prefill/decode hand-off, PCIe to a CPU tier): how busy each link
is over time, and the prefix hits by tier.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from .metrics import Results

MAX_POINTS = 5000  # scatter points drawn (evenly spaced by arrival); CDFs use quantiles


def _cdf(values: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values[np.isfinite(values)])
    if v.size == 0:
        return v, v
    q = np.linspace(0, 1, min(points, v.size))
    return np.quantile(v, q), q


def _figure(cols: dict, summary: dict, queues: dict, links: dict | None = None) -> go.Figure:
    titles = (
        "TTFT (CDF)", "TPOT (CDF)", "TTFT by arrival time", "E2E and job latency (CDF)",
        "Throughput over time", "Prefix hits and preemptions over time",
        "Requests waiting and running (all replicas)",
    )  # fmt: skip
    specs = [[{}, {}], [{}, {}], [{}, {}], [{"colspan": 2}, None]]
    if links:  # a fifth row where the cluster has links
        titles += ("Link utilisation over time", "Prefix hits by tier over time")
        specs.append([{}, {}])
    fig = make_subplots(rows=len(specs), cols=2, subplot_titles=titles, specs=specs,
                        vertical_spacing=0.07 * 4 / len(specs))  # fmt: skip
    slo = summary["slo"]
    curves = [
        ((1, 1), "TTFT", "ttft_s", slo["ttft_s"]),
        ((1, 2), "TPOT", "tpot_s", slo["tpot_s"]),
        ((2, 2), "E2E", "e2e_s", None),
    ]
    if summary.get("jobs"):  # sessions and agent jobs: first arrival to last finish
        curves.append(((2, 2), "job latency", "job_latency_s", None))
    for (row, col), name, key, limit in curves:
        x, y = _cdf(cols[key])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name), row=row, col=col)
        if limit is not None:
            fig.add_vline(x=limit, line_dash="dash", line_color="red", row=row, col=col)
        fig.update_xaxes(title_text="seconds", type="log", row=row, col=col)
    done = np.isfinite(cols["ttft_s"])
    idx = np.flatnonzero(done)
    if idx.size > MAX_POINTS:
        idx = idx[np.linspace(0, idx.size - 1, MAX_POINTS).astype(np.int64)]
    fig.add_trace(
        go.Scattergl(x=cols["arrival_s"][idx], y=cols["ttft_s"][idx], mode="markers",
                     marker={"size": 3}, name="TTFT"),
        row=2, col=1,
    )  # fmt: skip
    fig.update_yaxes(title_text="TTFT (s)", type="log", row=2, col=1)
    fig.update_xaxes(title_text="arrival (s)", row=2, col=1)
    if done.any():
        t_end = float(np.nanmax(cols["finish_s"]))
        width = max(t_end / 120, 1e-3)
        edges = np.arange(0.0, t_end + width, width)
        fin = cols["finish_s"][done]
        toks, _ = np.histogram(fin, edges, weights=cols["output_tokens"][done])
        mid = (edges[:-1] + edges[1:]) / 2
        fig.add_trace(go.Scatter(x=mid, y=toks / width, name="output tok/s"), row=3, col=1)
        fig.update_yaxes(title_text="output tokens/s", row=3, col=1)
        arr = cols["arrival_s"]
        units, _ = np.histogram(arr, edges, weights=cols["units"])
        hits, _ = np.histogram(arr, edges, weights=cols["hit_units"])
        pre, _ = np.histogram(arr, edges, weights=cols["preemptions"])
        ratio = np.divide(hits, units, out=np.full_like(hits, np.nan, dtype=float),
                          where=units > 0)  # fmt: skip
        fig.add_trace(go.Scatter(x=mid, y=ratio, name="prefix-hit ratio"), row=3, col=2)
        fig.add_trace(go.Bar(x=mid, y=pre, name="preemptions (by arrival)"), row=3, col=2)
        fig.update_xaxes(title_text="time (s)", row=3, col=1)
        fig.update_xaxes(title_text="arrival (s)", row=3, col=2)
    for name in ("waiting", "running"):
        fig.add_trace(go.Scatter(x=queues["time_s"], y=queues[name], mode="lines",
                                 line={"shape": "hv"}, name=name), row=4, col=1)  # fmt: skip
    fig.update_xaxes(title_text="time (s)", row=4, col=1)
    fig.update_yaxes(title_text="requests", row=4, col=1)
    if links:
        _link_rows(fig, cols, links, done)
    fig.update_layout(height=1450 if not links else 1800, template="plotly_white",
                      legend={"orientation": "h"}, margin={"t": 60, "b": 40})  # fmt: skip
    return fig


def _link_rows(fig, cols: dict, links: dict, done) -> None:
    """Busy fraction of each link over time; prefix hits by tier (by arrival)."""
    for name, (starts, busy) in links.items():
        fig.add_trace(go.Scatter(x=starts, y=busy, mode="lines", name=f"{name} busy"),
                      row=5, col=1)  # fmt: skip
    fig.update_yaxes(title_text="busy fraction", range=[0, 1.05], row=5, col=1)
    fig.update_xaxes(title_text="time (s)", row=5, col=1)
    if done.any():
        t_end = float(np.nanmax(cols["finish_s"]))
        width = max(t_end / 120, 1e-3)
        edges = np.arange(0.0, t_end + width, width)
        mid = (edges[:-1] + edges[1:]) / 2
        arr = cols["arrival_s"]
        units, _ = np.histogram(arr, edges, weights=cols["units"])
        for label, hits in (
            ("GPU", cols["hit_units"] - cols["cpu_hit_units"]),
            ("CPU tier", cols["cpu_hit_units"]),
        ):
            h, _ = np.histogram(arr, edges, weights=hits)
            ratio = np.divide(h, units, out=np.full_like(h, np.nan, dtype=float),
                              where=units > 0)  # fmt: skip
            fig.add_trace(go.Scatter(x=mid, y=ratio, name=f"hits: {label}"), row=5, col=2)
        fig.update_xaxes(title_text="arrival (s)", row=5, col=2)


def report_html(results: Results, title: str) -> str:
    """The report as one HTML document (plotly.js embedded: opens without a network)."""
    s = results.summary
    cols = results.columns()
    fig = _figure(cols, s, results.timeseries.columns(), getattr(results, "link_series", None))
    plot = pio.to_html(fig, full_html=False, include_plotlyjs=True, div_id="kvsim-report",
                       config={"displaylogo": False})  # fmt: skip
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in results.table_rows()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>kvsim · {html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}th,td{padding:.25em .8em;text-align:left;"
        "border-bottom:1px solid #ddd}th{font-weight:600}</style></head><body>"
        f"<h1>kvsim · {html.escape(title)}</h1><table>{rows}</table>{plot}</body></html>\n"
    )
