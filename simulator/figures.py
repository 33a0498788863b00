"""Plotly figures as plain dicts, in the exact form plotly's validated ``go.Figure`` holds them,
and the chart ``<div>`` that ``plotly.io.to_html`` writes for one: the same bytes without
building ``go.Figure``/``go.Scatter`` objects, whose per-property validation (and the import of
its validators) cost more than the rest of a small run's report.

What plotly's validation does to the figures kvsim draws, and what is done here instead:

- key order: a trace's keys (and its ``line``/``marker`` keys) in the order of plotly's generated
  classes, which is the order of the plot-schema names (sorted), ``type`` last; the layout's in
  the order ``go.Figure()`` then ``update_layout(...)`` then ``update_yaxes(range=...)`` leave;
- arrays: a numpy array becomes plotly.js's typed-array spec (``{"dtype", "bdata"}``, int64
  narrowed to the smallest integer type that holds its values), a list gets plain Python scalars;
- the ``plotly_white`` template: the JSON file plotly ships, in the key order its validated
  ``go.layout.Template`` has (schema names sorted; a template's trace lists are named in the
  plural there, so ``barpolar`` sorts before ``bar``; a trace's ``type`` last);
- serialisation: as ``plotly.io.json.to_json_plotly`` (orjson when installed, else ``json``,
  then the same escapes), and the ``<div>``/``<script>`` text of ``plotly.io.to_html``.

``tests/simulator/test_figures.py`` pins each of these against plotly itself (validation on),
so a plotly release that changes any of them fails there rather than drifting silently.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np

# plotly.js's names of the typed arrays it decodes (plotly's ``plotlyjsShortTypes``).
_SHORT_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
                "uint32": "u4", "float32": "f4", "float64": "f8"}  # fmt: skip
_NARROW = {"int64": ("int8", "int16", "int32"), "uint64": ("uint8", "uint16", "uint32")}
# Characters escaped in the JSON put into a <script> (plotly.io.json's ``_swap_json``/``_orjson``).
_SWAP_JSON = (("<", "\\u003c"), (">", "\\u003e"), ("/", "\\u002f"))
_SWAP_ORJSON = _SWAP_JSON + (("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_WINDOW_CONFIG = "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"


@functools.cache
def _plotly_dir() -> Path:
    """The installed plotly package's folder, found without importing plotly."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("plotly is not installed")
    return Path(spec.origin).parent


def plotly_js() -> str:
    """plotly.js as shipped with the installed plotly package (``plotly.offline.get_plotlyjs``)."""
    return (_plotly_dir() / "package_data" / "plotly.min.js").read_bytes().decode("utf-8")


def _template_order(node, key: str | None = None):
    """``node`` with its dicts' keys in a validated template's order (see the module docstring);
    ``key`` is the name ``node`` has in its parent dict."""
    if isinstance(node, list):
        return [_template_order(v) for v in node]
    if not isinstance(node, dict):
        return node
    if key == "data":  # the trace lists: plural schema names ("bars" after "barpolars")
        return {k: _template_order(node[k]) for k in sorted(node, key=lambda k: k + "s")}
    out = {k: _template_order(node[k], k) for k in sorted(node) if k != "type"}
    if "type" in node:
        out["type"] = node["type"]
    return out


@functools.cache
def template() -> dict:
    """The ``plotly_white`` template as a validated figure holds it. Shared by every figure:
    read it, never change it."""
    path = _plotly_dir() / "package_data" / "templates" / "plotly_white.json"
    return _template_order(json.loads(path.read_bytes()))


def colorway() -> list[str]:
    """The template's colour sequence (plotly's default trace colours)."""
    return template()["layout"]["colorway"]


def figure(title: str, x: str, y: str, log_x: bool = False, log_y: bool = False,
           height: int = 340) -> dict:  # fmt: skip
    """An empty figure (``{"data": [], "layout": {...}}``) with kvsim's layout: one metric per
    figure, so each has its own axis. Add traces with ``fig["data"].append(scatter(...))`` and a
    y range with ``fig["layout"]["yaxis"]["range"] = [lo, hi]`` (after the axis' title and type,
    where ``update_yaxes`` puts it)."""
    xaxis: dict = {"title": {"text": x}}
    yaxis: dict = {"title": {"text": y}}
    if log_x:
        xaxis["type"] = "log"
    if log_y:
        yaxis["type"] = "log"
    # NOTE: the order go.Figure() (its template first) then update_layout leave: compound
    # properties in the order given, then height.
    layout = {
        "template": template(),
        "title": {"text": title},
        "margin": {"t": 50, "b": 45, "l": 60, "r": 20},
        "legend": {"orientation": "h", "y": -0.25},
        "xaxis": xaxis,
        "yaxis": yaxis,
        "height": height,
    }
    return {"data": [], "layout": layout}


def _typed(a: np.ndarray):
    """A numpy array as plotly.js's typed-array spec (plotly's ``to_typed_array_spec``): int64 and
    uint64 narrowed to the smallest type holding every value; other dtypes as a plain list."""
    a = np.ascontiguousarray(a)
    if a.size == 0:
        return []
    dtype = str(a.dtype)
    for narrow in _NARROW.get(dtype, ()):
        info = np.iinfo(narrow)
        if a.min() >= info.min and a.max() <= info.max:
            a, dtype = a.astype(narrow), narrow
            break
    if dtype not in _SHORT_TYPES:
        return a.tolist()
    spec = {"dtype": _SHORT_TYPES[dtype], "bdata": base64.b64encode(a).decode("ascii")}
    if a.ndim > 1:
        spec["shape"] = str(a.shape)[1:-1]
    return spec


def _plain(v):
    """A list's items as plotly's validators leave them: numpy scalars as Python ones."""
    if isinstance(v, (list, tuple)):
        return [_plain(e) for e in v]
    if isinstance(v, np.ndarray):
        return v.item() if v.ndim == 0 else [_plain(e) for e in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _prop(v):
    if isinstance(v, dict):
        return {k: _prop(v[k]) for k in sorted(v) if v[k] is not None}
    if isinstance(v, np.ndarray):
        return _typed(v)
    if isinstance(v, (list, tuple)):
        return _plain(v)
    return v


def scatter(**props) -> dict:
    """A scatter trace (SVG: no WebGL, which headless browsers and remote desktops often lack) as
    ``go.Scatter(**props)`` holds it; a property given as None is left out, as plotly does."""
    trace = {k: _prop(props[k]) for k in sorted(props) if props[k] is not None}
    trace["type"] = "scatter"
    return trace


@functools.cache
def _default_engine() -> str:
    """plotly's "auto" engine: orjson when it imports, else the standard library's json."""
    try:
        import orjson  # noqa: F401
    except ImportError:
        return "json"
    return "orjson"


def to_json(obj, engine: str | None = None) -> str:
    """``obj`` (plain types, as figure() and scatter() build) as compact JSON for a <script>, as
    ``plotly.io.json.to_json_plotly`` writes it; ``engine``: "orjson" or "json", by default
    orjson when installed (plotly's "auto")."""
    if engine is None:
        engine = _default_engine()
    if engine == "orjson":
        import orjson

        opts = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
        text, swap = orjson.dumps(obj, option=opts).decode("utf8"), _SWAP_ORJSON
    else:
        text, swap = json.dumps(obj, separators=(",", ":")), _SWAP_JSON
        # plotly's encoder: NaN and ±Infinity as null (strict JSON), by a second pass over the
        # text that only runs when one may occur.
        if "NaN" in text or "Infinity" in text:
            text = json.dumps(json.loads(text, parse_constant=lambda _: None),
                              separators=(",", ":"))  # fmt: skip
    for unsafe, safe in swap:
        if unsafe in text:
            text = text.replace(unsafe, safe)
    return text


def _px(value) -> str:
    try:
        float(value)
    except (TypeError, ValueError):
        return value
    return f"{value}px"


def chart_div(fig: dict, div_id: str, plotlyjs: bool | str, config: dict) -> str:
    """One figure as the ``<div>`` ``plotly.io.to_html(fig, full_html=False, div_id=div_id,
    include_plotlyjs=plotlyjs, config=config)`` writes: ``plotlyjs`` True embeds plotly.js, False
    relies on an earlier chart's, a path ending in .js references a shared copy there."""
    layout = fig.get("layout", {})
    template_layout = layout.get("template", {}).get("layout", {})
    width = _px(layout.get("width", template_layout.get("width", "100%")))
    height = _px(layout.get("height", template_layout.get("height", "100%")))
    config = dict(config)
    config.setdefault("responsive", True)
    if not config.get("showSendToCloud", False):
        config.pop("plotlyServerURL", None)
    jconfig = json.dumps(config)
    if plotlyjs is True:
        load = f"        {_WINDOW_CONFIG}\n        <script>{plotly_js()}</script>    "
    elif isinstance(plotlyjs, str) and plotlyjs.lower().endswith(".js"):
        load = (f'        {_WINDOW_CONFIG}\n        <script charset="utf-8" src="{plotlyjs}">'
                "</script>    ")  # fmt: skip
    elif plotlyjs is False:
        load = ""
    else:
        raise ValueError(f"plotlyjs: True, False or a path ending in .js, not {plotlyjs!r}")
    script = (
        f'                if (document.getElementById("{div_id}")) {{'
        f"                    Plotly.newPlot("
        f'                        "{div_id}",'
        f"                        {to_json(fig.get('data', []))},"
        f"                        {to_json(layout)},"
        f"                        {jconfig}"
        f"                    )"
        f"                }}"
    )
    return (
        f'<div style="height:{height}; width:{width};">                {load}'
        f'            <div id="{div_id}" class="plotly-graph-div" '
        f'style="height:100%; width:100%;"></div>'
        f"            <script>                window.PLOTLYENV=window.PLOTLYENV || {{}};"
        f"                {script};            </script>        </div>"
    ).strip()
