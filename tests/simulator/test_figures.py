"""Charts built as plain dicts (figures.py) against plotly itself, validation on: each chart kind
the run, compare and plan reports emit, rebuilt through ``go.Figure``/``go.Scatter`` the way the
reports once built it and written by ``plotly.io.to_html``, must be the same bytes; traces from
raw numpy arrays and lists must be what ``go.Scatter`` holds; the template, the JSON encoders and
the chart div must be plotly's. And `kvsim run` imports no plotly module at all."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import yaml
from helpers import ROOT

from kvsim.simulator import figures, load_scenario, pages, simulate
from kvsim.simulator.compare import load_run, overlay_figures
from kvsim.simulator.digest import digest
from kvsim.simulator.output import write_results
from kvsim.simulator.plan import parse_slo
from kvsim.simulator.plan.planner import Plan, PlanPoint, Pools, Question
from kvsim.simulator.plan.report import plan_figures
from kvsim.simulator.plan.search import Outcome
from kvsim.simulator.report import report_figures

CONFIG = {"displaylogo": False}


def _plotly_chart(fig: dict, div_id: str, plotlyjs) -> str:
    """``fig`` rebuilt with plotly's validated objects as the reports built their charts (an
    empty figure, ``update_layout`` with the plotly_white template, a ``go.Scatter`` per trace,
    ``update_yaxes`` for a range), written by ``plotly.io.to_html``."""
    lay = fig["layout"]
    ref = go.Figure()
    ref.update_layout(
        title=lay["title"], template="plotly_white", height=lay["height"], margin=lay["margin"],
        legend=lay["legend"],
        xaxis={"title": lay["xaxis"]["title"], "type": lay["xaxis"].get("type")},
        yaxis={"title": lay["yaxis"]["title"], "type": lay["yaxis"].get("type")},
    )  # fmt: skip
    for trace in fig["data"]:
        ref.add_trace(go.Scatter(**{k: v for k, v in trace.items() if k != "type"}))
    if "range" in lay["yaxis"]:
        ref.update_yaxes(range=lay["yaxis"]["range"])
    return pio.to_html(ref, full_html=False, include_plotlyjs=plotlyjs, div_id=div_id,
                       config=dict(CONFIG))  # fmt: skip


def _assert_plotly_writes_the_same(figs: list[tuple[str, dict]]) -> None:
    for div_id, fig in figs:
        assert pages.chart(fig, div_id, False) == _plotly_chart(fig, div_id, False), div_id


# ---- every chart kind the reports emit ------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A flat run (2 replicas, prefix hits) and a prefill/decode run over a link with a CPU tier
    (hand-off CDF, link use, hits by tier), both written as run folders."""
    tmp = tmp_path_factory.mktemp("figures")
    cases = {
        "flat": (ROOT / "scenarios" / "quickstart.yaml", ["workload.requests=120"]),
        "pd": (ROOT / "scenarios" / "scd_bandwidth.yaml",
               ["workload.requests=16", "cache.cpu_tier.size_gib=64"]),
    }  # fmt: skip
    out = {}
    for name, (path, sets) in cases.items():
        s = load_scenario(path, sets)
        res = simulate(s)
        write_results(tmp / name, s, res)
        out[name] = (tmp / name, res)
    return out


def test_run_report_charts_are_what_plotly_writes(runs):
    flat = report_figures(runs["flat"][1], digest(runs["flat"][1]))
    pd = report_figures(runs["pd"][1], digest(runs["pd"][1]))
    kinds = {div_id for div_id, _ in flat + pd}
    assert {"kvsim-ttft", "kvsim-handoff", "kvsim-ttft-by-arrival", "kvsim-hits", "kvsim-queues",
            "kvsim-kv-use", "kvsim-links"} <= kinds  # fmt: skip
    # The pools' run draws each replica's KV use and the hits by tier.
    kv = dict(pd)["kvsim-kv-use"]
    assert [t["name"] for t in kv["data"]] == ["all replicas", "prefill 0", "decode 0"]
    assert [t["name"] for t in dict(pd)["kvsim-hits"]["data"]] == [
        "prefix-hit ratio (both tiers)", "GPU", "CPU tier"]  # fmt: skip
    ranges = {div_id: fig["layout"]["yaxis"].get("range") for div_id, fig in flat + pd}
    assert ranges["kvsim-ttft"] == ranges["kvsim-hits"] == ranges["kvsim-kv-use"] == [0, 1.02]
    assert ranges["kvsim-links"] == [0, 1.05] and ranges["kvsim-throughput"] is None
    _assert_plotly_writes_the_same(flat + pd)


def test_compare_charts_are_what_plotly_writes(runs):
    loaded = [load_run(runs[name][0], i) for i, name in enumerate(("flat", "pd"))]
    figs = overlay_figures(loaded)
    assert len(figs) == 6 and all(fig["data"] for _, fig in figs)
    _assert_plotly_writes_the_same(figs)


def _point(i, value, meets, ttft, split=None):
    summary = {"ttft_s": {"p99": ttft}, "slo": {"goodput_requests_per_s": 2.5 * i},
               "utilisation": 0.1 * i if i != 2 else None}  # fmt: skip
    return PlanPoint(i, i // 2, value, (), summary, meets, [] if meets else ["ttft"], split)


@pytest.mark.parametrize("knob", ["replicas", "rate", "split"])
def test_plan_charts_are_what_plotly_writes(tmp_path, knob):
    slo = parse_slo("ttft_p99=2s")
    q = Question(tmp_path / "s.yaml", slo, rate=None if knob == "rate" else 4.0,
                 replicas=2 if knob == "rate" else None)  # fmt: skip
    if knob == "split":
        points = [
            _point(0, 3, False, 4.0, (1, 2)),
            _point(1, 3, True, 1.5, (2, 1)),
            _point(2, 4, True, 0.5, (1, 3)),
            _point(3, 4, True, math.nan, (3, 1)),
        ]
        plan = Plan(q, Outcome(3, 2, 3), points, pools=Pools("prefill", "decode", 1, 1))
    else:
        values = [1, 2, 4, 3] if knob == "replicas" else [2.0, 8.0, 4.0, 5.5]
        points = [
            _point(i, v, i > 0, t)
            for i, (v, t) in enumerate(zip(values, [3.0, 1.9, math.inf, 0.7], strict=True))
        ]
        plan = Plan(q, Outcome(values[1], values[0], values[1]), points)
    figs = plan_figures(plan)
    assert [div_id for div_id, _ in figs] == ["kvsim-plan-0", "kvsim-plan-1", "kvsim-plan-2"]
    _assert_plotly_writes_the_same(figs)


# ---- the pieces -----------------------------------------------------------------------------
def test_the_template_is_plotly_white_as_a_validated_figure_holds_it():
    fig = go.Figure()
    fig.update_layout(template="plotly_white")
    want = fig.to_dict()["layout"]["template"]
    assert json.dumps(figures.template()) == json.dumps(want)  # same keys in the same order
    assert figures.colorway() == list(pio.templates["plotly_white"].layout.colorway)


@pytest.mark.parametrize("name", ["plotly_dark", "ggplot2", "seaborn", "simple_white"])
def test_the_key_order_rule_holds_for_other_shipped_templates(name):
    path = figures._plotly_dir() / "package_data" / "templates" / f"{name}.json"
    fig = go.Figure()
    fig.update_layout(template=name)
    want = fig.to_dict()["layout"]["template"]
    assert json.dumps(figures._template_order(json.loads(path.read_text()))) == json.dumps(want)


def test_a_template_s_traces_end_with_their_type():
    # Keys that sort after "type" (none in the shipped templates) still come before it.
    doc = {
        "layout": {"colorway": ["#111"], "autotypenumbers": "strict"},
        "data": {
            "scatter": [
                {
                    "visible": True,
                    "type": "scatter",
                    "uid": "u",
                    "line": {"width": 2, "color": "red"},
                }
            ],
            "bar": [{"xaxis": "x", "type": "bar"}],
            "barpolar": [{"type": "barpolar"}],
        },
    }
    want = go.layout.Template(doc).to_plotly_json()
    assert json.dumps(figures._template_order(doc)) == json.dumps(want)


@pytest.mark.parametrize(
    "props",
    [
        {"x": np.array([0.5, np.nan, 2.0]), "y": np.arange(3), "mode": "lines",
         "line": {"shape": "hv", "width": 3, "color": None}, "name": "p50 ≤ 2 s <b>"},
        {"x": np.arange(10.0)[::3], "y": np.array([300, -5, 7, 0]), "connectgaps": False,
         "marker": {"size": 3}, "mode": "lines+markers"},
        {"x": np.array([70_000, 1]), "y": np.array([2**40, -1]), "name": None},
        {"x": np.array([3, 4], dtype=np.uint64), "y": np.array([1.5, 2.5], dtype=np.float32)},
        {"x": np.array([], dtype=float), "y": np.array([], dtype=np.int64), "mode": "lines"},
        {"x": [np.float64(1.5), np.int64(2), 3], "y": [None, 2.0, math.nan], "mode": "markers",
         "marker": {"color": ["#2ca02c", "#d62728", "#999"], "size": 9}, "hoverinfo": "skip",
         "text": ["point 0", "point 1", "point 2"]},
        {"x": (1, 2), "y": np.array([1, 2], dtype=np.int32), "line": {"dash": "dot"}},
    ],
)  # fmt: skip
def test_a_trace_is_what_go_scatter_holds(props):
    want = go.Figure(data=[go.Scatter(**props)]).to_dict()["data"][0]
    got = figures.scatter(**props)
    for engine in ("json", "orjson"):
        assert figures.to_json(got, engine) == pio.json.to_json_plotly(want, engine=engine)


@pytest.mark.parametrize("log_x, log_y, y_range", [(False, False, None), (True, False, [0, 1.02]),
                                                   (False, True, [0.5, 9])])  # fmt: skip
def test_a_layout_is_what_update_layout_leaves(log_x, log_y, y_range):
    fig = figures.figure("TTFT (CDF)", "seconds", "share", log_x, log_y, height=300)
    if y_range:
        fig["layout"]["yaxis"]["range"] = y_range
    ref = go.Figure()
    ref.update_layout(
        title={"text": "TTFT (CDF)"}, template="plotly_white", height=300,
        margin={"t": 50, "b": 45, "l": 60, "r": 20}, legend={"orientation": "h", "y": -0.25},
        xaxis={"title": {"text": "seconds"}, "type": "log" if log_x else None},
        yaxis={"title": {"text": "share"}, "type": "log" if log_y else None},
    )  # fmt: skip
    if y_range:
        ref.update_yaxes(range=y_range)
    assert json.dumps(fig["layout"]) == json.dumps(ref.to_dict()["layout"])


def test_json_is_what_plotly_s_encoders_write():
    obj = {
        "a": [1.0, math.nan, math.inf, -math.inf, None, True, 1e-05, 0.1, 2**62, 1e300, -0.0],
        "s": "x<y>/z\u2028\u2029 ≤ é \"q\"",
        "t": {"dtype": "f8", "bdata": "AAAAAAAA+H8="},
        "NaN": "NaN and Infinity in a string",
    }  # fmt: skip
    for engine in ("json", "orjson"):
        assert figures.to_json(obj, engine) == pio.json.to_json_plotly(obj, engine=engine)
    plain = {"a": [1, 2.5, "Infinity"]}  # no NaN: the json engine's single pass
    assert figures.to_json(plain, "json") == pio.json.to_json_plotly(plain, engine="json")


@pytest.mark.parametrize("plotlyjs", [True, False, "../../plotly.min.js"])
def test_a_chart_div_is_what_to_html_writes(plotlyjs):
    fig = figures.figure("t", "x", "y")
    fig["data"].append(figures.scatter(x=np.arange(4), y=np.ones(4), name="n"))
    # The same dict written by plotly (its key order checked by the tests above).
    want = pio.to_html(fig, full_html=False, include_plotlyjs=plotlyjs, div_id="d",
                       config=dict(CONFIG), validate=False)  # fmt: skip
    assert figures.chart_div(fig, "d", plotlyjs, CONFIG) == want
    # Without a height (none in the template either) the div is 100% high, as plotly makes it.
    bare = {"data": [], "layout": {"width": 500}}
    assert figures.chart_div(bare, "e", False, CONFIG) == pio.to_html(
        bare, full_html=False, include_plotlyjs=False, div_id="e", config=dict(CONFIG),
        validate=False)  # fmt: skip
    with pytest.raises(ValueError, match="plotlyjs: True, False or a path ending in .js"):
        figures.chart_div(fig, "d", "cdn", CONFIG)


def test_kvsim_run_imports_no_plotly(tmp_path):
    doc = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    doc["workload"]["requests"] = 30
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    code = (
        "import sys\n"
        "from kvsim.simulator.cli import main\n"
        f"assert main(['run', {str(tmp_path / 's.yaml')!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--no-progress']) == 0\n"
        "print('plotly modules:', sorted(m for m in sys.modules if 'plotly' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "plotly modules: []"
    assert "Plotly.newPlot" in (tmp_path / "out" / "report.html").read_text()
