"""A run's report.html: what was simulated, then what a serving engineer and a planner look at.

At the top, the resolved scenario (model, GPU, replicas, scheduler, cache and routing policies,
workload, SLO, latency model and whether it is calibrated) and the summary table. Then one chart
per metric, each with its own axis: the latency distributions against the SLO (CDFs of TTFT,
TPOT, E2E, queueing delay, job latency), whether TTFT drifts over the run (p50 and p99 by arrival
time: queueing shows as a ramp), throughput, prefix hits and preemptions over time, the queues
(overload shows as a waiting line that only grows), KV-cache use (the cluster's and each
replica's), and the per-replica figures. With pools and links (a prefill/decode hand-off, PCIe
to a CPU tier): each pool's settings, the hand-off's delay, how busy each link is over time, and
the prefix hits by tier.

Built from bounded series only — the request digest (``digest.py``: fixed log and time bins, one
streaming pass) and the sampled queue/KV series (``timeseries.py``: at most 2,048 samples) — so
the report's memory does not grow with the number of requests. Lines are thinned to at most
:data:`MAX_LINE_POINTS` points. Deterministic: fixed element ids, integer counts.
"""

from __future__ import annotations

import html
import math

import numpy as np
import yaml

from .digest import TIME_BINS, digest
from .figures import figure, scatter
from .metrics import Results
from .pages import charts, grid_table, page, rows_table

MAX_LINE_POINTS = 600
MAX_REPLICA_LINES = 16
"""Replicas drawn one line each in the per-replica charts (beyond, only the cluster's line)."""


def _thin(n: int, limit: int = MAX_LINE_POINTS) -> np.ndarray:
    """Indices of at most ``limit`` evenly spread samples of ``n`` (first and last kept)."""
    if n <= limit:
        return np.arange(n)
    # NOTE: steps of (n - 1) / (limit - 1) > 1 never round to the same index, so no np.unique
    # (whose first call imports numpy.ma: about 40 ms of a small run's report).
    return np.linspace(0, n - 1, limit).round().astype(np.int64)


def _policy(ref) -> str:
    params = ref.params
    if not params:
        return ref.type
    return f"{ref.type} ({', '.join(f'{k}={v}' for k, v in params.items())})"


def _kv_dtype(name: str, model) -> str:
    if name == "auto":
        return f"{8 * model.dtype_bytes}-bit (the model's)"
    return name


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()


def _model_text(model) -> str:
    layers = []
    if model.attention is not None:
        layers.append(f"{model.attention.layers} attention")
    if model.recurrent is not None:
        layers.append(f"{model.recurrent.layers} {model.recurrent.kind}")
    if model.moe is not None:
        moe = model.moe
        layers.append(f"{moe.layers} MoE ({moe.experts} experts, top {moe.top_k})")
    return (f"{model.name}: {model.params / 1e9:.2f} B parameters, {', '.join(layers)} layers, "
            f"{model.max_position} tokens of context")  # fmt: skip


def _gpu_text(scenario, name: str) -> str:
    gpu = scenario.gpu(name)
    source = scenario.gpu_file(name)
    where = f"; from {source}" if source else ""
    return (f"{gpu.name} ({gpu.memory_gib:g} GiB, {gpu.bf16_tflops:g} bf16 TFLOP/s, "
            f"{gpu.hbm_tbyte_per_s:g} TB/s{where})")  # fmt: skip


def _pool_rows(scenario, spec, model, blocks, prefix: str) -> list[tuple[str, str]]:
    """A pool's rows (a flat cluster's: its one unified pool)."""
    cache, sched = spec.cache, spec.scheduler
    chunking = sched.chunking.type
    if chunking == "adaptive":
        chunking = f"adaptive (target {sched.chunking.target_s} s)"
    cpu = cache.cpu_tier
    return [
        (f"{prefix}cluster", f"{spec.replicas} replica{'s' * (spec.replicas > 1)} × "
                             f"TP{spec.tensor_parallel} = {spec.replicas * spec.tensor_parallel} "
                             f"GPUs; {blocks} KV blocks of {cache.block_size} tokens per replica"),
        (f"{prefix}scheduler", f"{sched.max_num_batched_tokens} tokens and {sched.max_num_seqs} "
                               f"sequences per iteration, chunked prefill "
                               f"{_on(sched.enable_chunked_prefill)}, chunking {chunking}, "
                               f"watermark {sched.watermark:g}"
                               + (f", at most {sched.max_waiting} waiting"
                                  if sched.max_waiting else "")
                               + (f", max_model_len {sched.max_model_len}"
                                  if sched.max_model_len else "")),
        (f"{prefix}KV cache", f"{_kv_dtype(cache.kv_cache_dtype, model)} elements, layout "
                              f"{cache.layout}, prefix caching "
                              f"{_on(cache.enable_prefix_caching)}, eviction "
                              f"{_policy(cache.eviction)}"
                              + (f", checkpoints {_policy(cache.checkpoint)}"
                                 if model.recurrent is not None else "")
                              + (f"; CPU tier ({_policy(cpu.eviction)} eviction)"
                                 if cpu is not None else "")),
        (f"{prefix}routing", _policy(spec.routing)),
    ]  # fmt: skip


def scenario_rows(scenario, summary: dict) -> list[tuple[str, str]]:
    """The resolved scenario as (label, value) rows: what was simulated."""
    from importlib.metadata import PackageNotFoundError, version

    from .cluster import pool_model

    calibrated = summary.get("latency_calibrated")
    latency = summary.get("latency_model", scenario.latency.type)
    latency += "; calibrated" if calibrated else "; not calibrated (roofline from datasheets)"
    try:
        kvsim = version("kvsim")
    except PackageNotFoundError:
        kvsim = "unknown"
    specs = scenario.pool_specs()
    pools = summary.get("pools", {})
    rows = []
    for spec in specs:
        model = pool_model(scenario, spec)
        prefix = "" if len(specs) == 1 else f"{spec.name} pool: "
        blocks = pools.get(spec.name, summary).get("kv_blocks_per_replica", "auto")
        rows += [
            (f"{prefix}model", _model_text(model)),
            (f"{prefix}GPU", _gpu_text(scenario, spec.hardware)),
            *_pool_rows(scenario, spec, model, blocks, prefix),
        ]
    if scenario.disaggregated:
        t = scenario.transfer
        for link in scenario.links:
            link_doc = link.model_dump(mode="json", exclude_none=True)
            rows.append((f"link {link.label}", _flow(link_doc)))
        rows.append(("transfer", f"codec {_policy(t.codec)}, first token on the "
                                 f"{t.first_token}"))  # fmt: skip
    rows += [
        ("workload", _flow(scenario.workload.model_dump(mode="json", exclude_defaults=True))),
        ("SLO", f"TTFT ≤ {scenario.slo.ttft_s:g} s, TPOT ≤ {scenario.slo.tpot_s * 1e3:g} ms"),
        ("latency model", latency),
        ("seed", str(scenario.seed)),
        ("kvsim", kvsim),
    ]  # fmt: skip
    return rows


def _cdf_chart(d, metric: str, title: str, slo: float | None) -> dict:
    fig = figure(f"{title} (CDF)", "seconds", "share of requests", log_x=True)
    x, y = d.cdf(metric)
    fig["data"].append(scatter(x=x, y=y, mode="lines", line={"shape": "hv"}, name=title))
    if slo is not None:
        fig["data"].append(scatter(x=[slo, slo], y=[0, 1], mode="lines", name="SLO",
                                   line={"dash": "dash", "color": "red"}))  # fmt: skip
    fig["layout"]["yaxis"]["range"] = [0, 1.02]
    return fig


def _over_time(d, series: dict[str, np.ndarray], title: str, y: str, x: str = "time (s)",
               log_y: bool = False, y_range=None) -> dict:  # fmt: skip
    fig = figure(title, x, y, log_y=log_y)
    mid = d.mid_s()
    for name, values in series.items():
        fig["data"].append(scatter(x=mid, y=values, mode="lines+markers", marker={"size": 3},
                                   name=name, connectgaps=False))  # fmt: skip
    if y_range is not None:
        fig["layout"]["yaxis"]["range"] = y_range
    return fig


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _hit_series(d, tiers: bool) -> dict[str, np.ndarray]:
    """The prefix-hit ratio by arrival; with a CPU tier, each tier's share of it."""
    if not tiers:
        return {"prefix-hit ratio": _ratio(d.hit_units, d.units)}
    return {
        "prefix-hit ratio (both tiers)": _ratio(d.hit_units, d.units),
        "GPU": _ratio(d.hit_units - d.cpu_hit_units, d.units),
        "CPU tier": _ratio(d.cpu_hit_units, d.units),
    }


def _queue_charts(ts, summary: dict) -> list[tuple[str, dict]]:
    cols = ts.columns()
    # Each replica's line is named as the per-replica table names it (its pool, with pools).
    names = [f"{p['pool']} {p['replica']}" if "pool" in p else f"replica {p['replica']}"
             for p in summary.get("replicas", ())]  # fmt: skip
    idx = _thin(len(cols["time_s"]))
    t = cols["time_s"][idx]
    q = figure("Requests waiting and running (all replicas)", "time (s)", "requests")
    for name in ("waiting", "running"):
        q["data"].append(scatter(x=t, y=cols[name][idx], mode="lines", line={"shape": "hv"},
                                 name=name))  # fmt: skip
    kv = figure("KV cache use: blocks held by sequences", "time (s)", "share of KV blocks")
    kv["data"].append(scatter(x=t, y=cols["kv_use"][idx], mode="lines",
                              line={"shape": "hv", "width": 3}, name="all replicas"))  # fmt: skip
    per = ts.per_replica()
    if 1 < len(ts.capacity) <= MAX_REPLICA_LINES:
        for i, cap in enumerate(ts.capacity):
            line = {"shape": "hv", "width": 1}
            name = names[i] if i < len(names) else f"replica {i}"
            kv["data"].append(scatter(x=t, y=per[idx, i, 2] / cap, mode="lines", line=line,
                                      name=name))  # fmt: skip
    kv["layout"]["yaxis"]["range"] = [0, 1.02]
    return [("kvsim-queues", q), ("kvsim-kv-use", kv)]


def _link_chart(links: dict) -> dict:
    fig = figure("Link use over time", "time (s)", "busy fraction")
    for name, (starts, busy) in links.items():
        idx = _thin(len(starts))
        fig["data"].append(scatter(x=np.asarray(starts)[idx], y=np.asarray(busy)[idx],
                                   mode="lines", name=name))  # fmt: skip
    fig["layout"]["yaxis"]["range"] = [0, 1.05]
    return fig


def _replica_table(summary: dict) -> str:
    per = summary.get("replicas") or []
    pools = any("pool" in p for p in per)
    header = ["pool"] * pools + [
        "replica", "requests", "routed", "utilisation", "saturated", "busy", "KV use mean",
        "KV use peak", "evictions",
    ]  # fmt: skip
    rows = [
        ([p["pool"]] if pools else [])
        + [str(p["replica"]), str(p["requests"]), str(p["routed"]), f"{p['utilisation']:.1%}",
           f"{p['saturated_fraction']:.1%}", f"{p['busy_fraction']:.1%}",
         f"{p['kv_use_mean']:.1%}", f"{p['kv_use_peak']:.1%}", str(p["evictions"])]
        for p in per
    ]  # fmt: skip
    return grid_table(header, rows, numeric=set(range(1 + pools, len(header))))


def report_figures(results: Results, d) -> list[tuple[str, dict]]:
    """The report's charts, (element id, figure) in page order; ``d``: the run's digest."""
    s = results.summary
    slo = s["slo"]
    figs = [
        ("kvsim-ttft", _cdf_chart(d, "ttft_s", "TTFT", slo["ttft_s"])),
        ("kvsim-tpot", _cdf_chart(d, "tpot_s", "TPOT", slo["tpot_s"])),
        ("kvsim-e2e", _cdf_chart(d, "e2e_s", "E2E latency", None)),
        ("kvsim-queue-delay", _cdf_chart(d, "queue_s", "Queueing delay", None)),
    ]
    if s["jobs"]:
        figs.append(("kvsim-job", _cdf_chart(d, "job_latency_s", "Job latency", None)))
    if s.get("transfer", {}).get("handoffs"):
        figs.append(("kvsim-handoff", _cdf_chart(d, "handoff_s", "Hand-off", None)))
    width = d.width_s
    figs += [
        ("kvsim-ttft-by-arrival", _over_time(
            d, {"p50": d.ttft_quantiles(0.5), "p99": d.ttft_quantiles(0.99)},
            "TTFT by arrival time", "TTFT (s)", "arrival (s)", log_y=True)),
        ("kvsim-throughput", _over_time(
            d, {"output tokens/s": d.output_tokens / width}, "Throughput over time",
            "output tokens/s")),
        ("kvsim-hits", _over_time(
            d, _hit_series(d, "cpu_tier" in s),
            "Prefix hits by arrival time", "share of content units", "arrival (s)",
            y_range=[0, 1.02])),
        ("kvsim-preemptions", _over_time(
            d, {"preemptions/s": d.preemptions / width}, "Preemptions by arrival time",
            "preemptions/s", "arrival (s)")),
    ]  # fmt: skip
    if results.timeseries is not None:
        figs += _queue_charts(results.timeseries, s)
    links = getattr(results, "link_series", None)
    if links:
        figs.append(("kvsim-links", _link_chart(links)))
    return figs


def report_html(results: Results, scenario, plotlyjs: bool | str = True) -> str:
    """The report as one HTML document. ``plotlyjs``: True embeds plotly.js (the page opens
    without a network); a path ending in .js references a shared copy there instead."""
    d = digest(results)
    figs = report_figures(results, d)
    s = results.summary
    width = d.width_s
    resolved = html.escape(scenario.resolved_yaml())
    body = (
        "<h2>Scenario</h2>" + rows_table(scenario_rows(scenario, s))
        + f"<details><summary>resolved scenario (scenario.resolved.yaml)</summary><pre>{resolved}"
        "</pre></details>"
        + "<h2>Summary</h2>" + rows_table(results.table_rows())
        + f"<h2>Charts</h2><p>Latency CDFs from log bins (2.3% wide); time series in "
        f"{TIME_BINS} bins of {width:.3g} s and sampled queues every "
        f"{_interval(results):.3g} s.</p>"
        + charts(figs, plotlyjs)
        + "<h2>Replicas</h2>" + _replica_table(s)
    )  # fmt: skip
    return page(f"kvsim · {scenario.name}", body)


def _interval(results: Results) -> float:
    ts = results.timeseries
    return ts.interval_ns / 1e9 if ts is not None else math.nan
