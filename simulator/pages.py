"""The HTML pages kvsim writes (a run's report, a sweep's, a comparison's, a plan's): one style,
charts as plotly SVG figures built as plain dicts (``figures.py``), fixed element ids, so a page
is the same bytes on every run.

plotly.js (about 4.8 MB) is embedded once per page by default, so a page opens without a
network. A page written beside many others (a sweep's points) can instead reference one shared
copy: ``plotlyjs`` is then the copy's path relative to the page (``../../plotly.min.js``), and the
writer puts ``figures.plotly_js()`` there.
"""

from __future__ import annotations

import csv
import html
import io

from .figures import chart_div

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


def chart(fig: dict, div_id: str, plotlyjs: bool | str) -> str:
    """One figure (as ``figures.figure`` builds it) as a div with a fixed id; ``plotlyjs``: True
    embeds plotly.js (the page's first chart), False relies on an earlier chart's, a path ending
    in .js references a shared copy."""
    return chart_div(fig, div_id, plotlyjs, CONFIG)


def charts(figures: list[tuple[str, dict]], plotlyjs: bool | str = True) -> str:
    """Figures in a grid, plotly.js included (or referenced) with the first only."""
    divs = [chart(fig, div_id, plotlyjs if i == 0 else False)
            for i, (div_id, fig) in enumerate(figures)]  # fmt: skip
    return f"<div class='charts'>{''.join(divs)}</div>"


def rows_table(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as a two-column table."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def grid_csv(header: list[str], rows: list[list[str]]) -> str:
    """A grid as CSV text (``\\n`` line ends): what ``grid_table`` shows, for a ``.csv`` file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


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
