"""The HTML pages kvsim writes (a run's report, a sweep's, a comparison's, a plan's): one style,
charts as plotly SVG figures (``go.Scatter``: no WebGL, which headless browsers and remote
desktops often lack), fixed element ids, so a page is the same bytes on every run.

plotly.js (about 4.8 MB) is embedded once per page by default, so a page opens without a
network. A page written beside many others (a sweep's points) can instead reference one shared
copy: ``plotlyjs`` is then the copy's path relative to the page (``../../plotly.min.js``), and the
writer puts :func:`plotly_js` there.
"""

from __future__ import annotations

import functools
import html

import plotly.graph_objects as go
import plotly.io as pio

PLOTLY_FILE = "plotly.min.js"
"""The name of a shared copy of plotly.js beside pages that reference it."""
CONFIG = {"displaylogo": False}
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1500px}"
    "table{border-collapse:collapse;font-size:.9em}th,td{padding:.2em .7em;text-align:left;"
    "border-bottom:1px solid #ddd;vertical-align:top}th{font-weight:600}"
    ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}"
    ".wide{overflow-x:auto}td.num,th.num{text-align:right}pre{font-size:.8em}"
)


def plotly_js() -> str:
    """plotly.js as shipped with the installed plotly package."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# Not empty: plotly replaces an empty template with its default one (deep-copying that instead).
_PLACEHOLDER = {"layout": {"meta": "kvsim:plotly_white"}}


@functools.cache
def _template() -> dict:
    """The plotly_white template as a validated figure holds it (plotly's own key order)."""
    fig = go.Figure()
    fig.update_layout(template="plotly_white")
    return fig.to_dict()["layout"]["template"]


def chart(fig: go.Figure, div_id: str, plotlyjs: bool | str) -> str:
    """One figure as a div with a fixed id; ``plotlyjs``: True embeds plotly.js (the page's first
    chart), False relies on an earlier chart's, a path ending in .js references a shared copy."""
    d = fig.to_dict()
    layout = d["layout"]
    if layout.get("template") == _PLACEHOLDER:
        # A figure from figure(): its placeholder (in the template's place) becomes the template
        # validated once per process. Assigning a template validates and deep-copies all of it
        # (about 35 ms a figure); the page's bytes are the same.
        layout["template"] = _template()
    return pio.to_html(d, full_html=False, include_plotlyjs=plotlyjs, div_id=div_id,
                       config=CONFIG, validate=False)  # fmt: skip


def charts(figures: list[tuple[str, go.Figure]], plotlyjs: bool | str = True) -> str:
    """Figures in a grid, plotly.js included (or referenced) with the first only."""
    divs = [chart(fig, div_id, plotlyjs if i == 0 else False)
            for i, (div_id, fig) in enumerate(figures)]  # fmt: skip
    return f"<div class='charts'>{''.join(divs)}</div>"


def figure(title: str, x: str, y: str, log_x: bool = False, log_y: bool = False,
           height: int = 340) -> go.Figure:  # fmt: skip
    """An empty figure with kvsim's layout: one metric per figure, so each has its own axis. Its
    template is an empty placeholder that chart() fills with plotly_white."""
    fig = go.Figure()
    fig.update_layout(
        title={"text": title}, height=height,
        margin={"t": 50, "b": 45, "l": 60, "r": 20}, legend={"orientation": "h", "y": -0.25},
        xaxis={"title": {"text": x}, "type": "log" if log_x else None},
        yaxis={"title": {"text": y}, "type": "log" if log_y else None},
    )  # fmt: skip
    # Assigned, not merged: update_layout would merge it into the default template.
    fig.layout.template = _PLACEHOLDER
    return fig


def rows_table(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as a two-column table."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def grid_table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table with a header row; columns in ``numeric`` are right-aligned."""

    def cell(tag: str, j: int, text: str) -> str:
        cls = " class='num'" if j in numeric else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", j, v) for j, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def page(title: str, body: str) -> str:
    """A whole HTML document."""
    t = html.escape(title)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title>"
        f"<style>{STYLE}</style></head><body><h1>{t}</h1>{body}</body></html>\n"
    )
