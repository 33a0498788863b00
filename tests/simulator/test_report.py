"""report.html: the resolved scenario at the top, one SVG chart per metric drawn from bounded
digests (checked here against independent computations over the requests), per-replica figures,
and the same bytes on every run. (test_pages_in_browser.py opens it in Chromium.)"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import plotly_figures, scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.digest import LOG_BINS, TIME_BINS, Digest, edges_s
from kvsim.simulator.metrics import NS, Recorder, Results
from kvsim.simulator.report import MAX_LINE_POINTS, report_html, scenario_rows
from kvsim.simulator.scheduler import Seq


def _scenario(tmp_path, rows, **over):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    return scenario_from_dict(scenario_doc(trace, **over), base_dir=tmp_path)


def _rows(n: int) -> list[dict]:
    return [{"arrival_s": 0.013 * i, "prompt_tokens": 200 + 37 * (i % 11),
             "output_tokens": 1 + 9 * (i % 5)} for i in range(n)]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    s = _scenario(tmp, _rows(300), cluster={"replicas": 3},
                  cache={"num_gpu_blocks": 400, "eviction": {"type": "max_score", "window_s": 30}},
                  scheduler={"max_num_batched_tokens": 1024, "max_num_seqs": 8})  # fmt: skip
    res = simulate(s)
    return s, res, report_html(res, s)


def test_the_scenario_is_at_the_top(run):
    s, res, page = run
    rows = dict(scenario_rows(s, res.summary))
    assert rows["cluster"] == "3 replicas × TP1 = 3 GPUs; 400 KV blocks of 16 tokens per replica"
    assert rows["model"].startswith("llama-3.1-8b: 8.03 B parameters, 32 attention layers")
    assert rows["GPU"] == "h100-sxm (79.19 GiB, 989 bf16 TFLOP/s, 3.35 TB/s)"
    assert rows["KV cache"] == (
        "16-bit (the model's) elements, layout contiguous, prefix caching on, eviction max_score "
        "(window_s=30)"
    )
    assert rows["routing"] == "least_loaded"
    assert rows["scheduler"] == (
        "1024 tokens and 8 sequences per iteration, chunked prefill on, chunking fixed, watermark 0"
    )
    assert rows["latency model"] == (
        "roofline v2 (h100-sxm, uncalibrated); not calibrated (roofline from datasheets)"
    )
    assert rows["SLO"] == "TTFT ≤ 2 s, TPOT ≤ 100 ms"
    assert rows["workload"].startswith("{type: trace, path: ")
    head = page.index("<h2>Scenario</h2>")
    assert head < page.index("<h2>Summary</h2>") < page.index("<h2>Charts</h2>")
    assert page.index("<th>model</th>") < page.index("Plotly.newPlot")


def test_one_svg_chart_per_metric_with_its_own_axis(run):
    s, res, page = run
    figs = plotly_figures(page)
    assert list(figs) == [
        "kvsim-ttft", "kvsim-tpot", "kvsim-e2e", "kvsim-queue-delay", "kvsim-ttft-by-arrival",
        "kvsim-throughput", "kvsim-hits", "kvsim-preemptions", "kvsim-queues", "kvsim-kv-use",
    ]  # fmt: skip
    for data, layout in figs.values():
        assert {t["type"] for t in data} == {"scatter"}  # SVG: no scattergl, no WebGL
        assert "xaxis2" not in layout and "yaxis2" not in layout  # one axis pair a chart
    assert page.count('<script type="text/javascript">/**') <= 1  # plotly.js embedded once
    # The SLO lines sit at the scenario's SLO.
    ttft, _ = figs["kvsim-ttft"]
    assert ttft[1]["name"] == "SLO" and ttft[1]["x"] == [2.0, 2.0]
    # Per-replica KV lines beside the cluster's, and the per-replica table.
    kv, _ = figs["kvsim-kv-use"]
    assert [t["name"] for t in kv] == ["all replicas", "replica 0", "replica 1", "replica 2"]
    assert page.count("<td class='num'>") == 3 * 8


def test_queue_and_kv_charts_are_the_sampled_series_thinned(run):
    s, res, page = run
    figs = plotly_figures(page)
    cols = res.timeseries.columns()
    n = len(cols["time_s"])
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_LINE_POINTS)).round().astype(int))
    queues, _ = figs["kvsim-queues"]
    assert queues[0]["y"] == cols["waiting"][idx].tolist()
    assert queues[1]["y"] == cols["running"][idx].tolist()
    kv, _ = figs["kvsim-kv-use"]
    per = res.timeseries.per_replica()
    assert kv[2]["y"] == (per[idx, 1, 2] / 400).tolist()
    assert len(kv[0]["x"]) <= MAX_LINE_POINTS


def _record(rec, rid, arrival, first, finish, out):
    req = SimpleNamespace(id=rid, output_tokens=out, prompt_tokens=10, lengths_estimated=False,
                          blocks=(1, 2), session=None, turn=0)  # fmt: skip
    seq = Seq(req, arrival)
    seq.first_ns, seq.admitted_ns = first, arrival + (first - arrival) // 2
    seq.hit_units, seq.preemptions = int(rid % 3 == 0), rid % 2
    rec.finished(seq, 0, finish, -1)


def test_digest_against_the_values_by_hand():
    """Histogram bins, CDF points and TTFT quantiles by arrival, each recomputed here from the
    raw values with numpy (values drawn away from the log bins' edges)."""
    rng = np.random.default_rng(7)
    rec = Recorder(1.0, 0.1)
    n = 2000
    arrival = np.sort(rng.integers(0, 50 * 10**9, n))
    ttft = (10 ** rng.uniform(-4.5, 0.5, n) * NS).astype(np.int64)
    decode = (10 ** rng.uniform(-2, 1, n) * NS).astype(np.int64)
    out = rng.integers(1, 40, n)
    for i in range(n):
        _record(rec, i, int(arrival[i]), int(arrival[i] + ttft[i]),
                int(arrival[i] + ttft[i] + decode[i]), int(out[i]))  # fmt: skip
    res = Results(rec, {})
    d = Digest(res.end_s)
    for raw in res.records():
        d.add(raw)
    edges = edges_s()
    ttft_s = ttft / NS
    assert d.hist["ttft_s"].sum() == n and len(d.hist["ttft_s"]) == LOG_BINS
    assert (
        d.hist["ttft_s"].tolist()
        == np.bincount(np.searchsorted(edges, ttft_s, side="left"), minlength=LOG_BINS).tolist()
    )
    x, y = d.cdf("e2e_s")
    e2e = (ttft + decode) / NS
    assert y.tolist() == [float(np.mean(e2e <= v)) for v in x]
    first = np.searchsorted(edges, e2e.min())  # the bin of the smallest value, from its lower edge
    assert (x[0], x[1], y[0], y[-1]) == (edges[first - 1], edges[first], 0.0, 1.0)

    tpot = decode[out > 1] / NS / (out[out > 1] - 1)
    assert d.hist["tpot_s"].sum() == len(tpot)
    # Time bins: arrivals, finishes, output tokens, units and hits by arrival.
    width = res.end_s / TIME_BINS
    a_bin = np.minimum((arrival / NS / width).astype(int), TIME_BINS - 1)
    f_bin = np.minimum(((arrival + ttft + decode) / NS / width).astype(int), TIME_BINS - 1)
    assert d.arrived.tolist() == np.bincount(a_bin, minlength=TIME_BINS).tolist()
    assert d.output_tokens.tolist() == np.bincount(f_bin, out, TIME_BINS).astype(int).tolist()
    assert d.units.sum() == 2 * n and d.hit_units.sum() == len(range(0, n, 3))
    assert d.preemptions.sum() == n // 2
    for q in (0.5, 0.99):
        got = d.ttft_quantiles(q)
        for b in range(TIME_BINS):
            v = np.sort(ttft_s[a_bin == b])
            if v.size == 0:
                assert math.isnan(got[b])
            else:
                k = math.ceil(q * v.size)
                assert got[b] == edges[np.searchsorted(edges, v[k - 1])], (q, b)


def test_the_report_never_loads_every_request(tmp_path, monkeypatch):
    """It reads the digest and the sampled series only: the per-request columns and rows are
    never built, and a run 10× longer gives charts of the same sizes."""

    def boom(*args, **kwargs):
        raise AssertionError("the report loaded every request")

    small = _scenario(tmp_path, _rows(60))
    (tmp_path / "big").mkdir()
    big = _scenario(tmp_path / "big", _rows(600))
    results = [simulate(small), simulate(big)]
    monkeypatch.setattr(Results, "columns", boom)
    monkeypatch.setattr(Results, "requests", property(boom))
    sizes = []
    for s, res in zip((small, big), results, strict=True):
        figs = plotly_figures(report_html(res, s))
        sizes.append({k: [len(t["x"]) for t in data if k.startswith("kvsim-t")]
                      for k, (data, _) in figs.items()})  # fmt: skip
    assert sizes[0]["kvsim-throughput"] == sizes[1]["kvsim-throughput"] == [TIME_BINS]


def test_same_run_same_bytes_and_a_shared_plotly(run, tmp_path):
    s, res, page = run
    again = simulate(s)
    assert report_html(again, s) == page
    shared = report_html(again, s, "../plotly.min.js")
    assert '<script charset="utf-8" src="../plotly.min.js"></script>' in shared
    assert len(shared) < 300_000 < 4_000_000 < len(page)


def test_a_cdf_of_equal_values_is_one_step():
    """Every value in one log bin: the CDF goes from 0 at the bin's lower edge to 1 at its upper
    edge (a single point would draw no line)."""
    from kvsim.simulator.digest import Digest

    d = Digest(1.0)
    d.hist["ttft_s"][500] = 40
    x, y = d.cdf("ttft_s")
    assert x.tolist() == edges_s()[499:501].tolist() and y.tolist() == [0.0, 1.0]
    d.hist["queue_s"][0] = 3  # zeros count in bin 0, drawn from LOW_S
    assert d.cdf("queue_s")[0].tolist() == [1e-6, edges_s()[0]]
