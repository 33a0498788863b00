"""Service-level objectives a plan must meet: ``ttft_p99=2s,tpot_p99=100ms``.

Each term is ``<metric>_<statistic>=<limit>``: metric ``ttft``, ``tpot``, ``e2e``, ``queue``
(queueing delay) or ``job`` (job latency); statistic ``p50``, ``p90``, ``p99`` or ``mean`` (as
summary.json has them); limit a number with a unit ``s``, ``ms`` or ``us`` (no unit: seconds). A
run meets the SLO when every term holds on its finished requests and no request was rejected by a
full queue (``scheduler.max_waiting``): turning requests away is not meeting an SLO. Requests
dropped for reasons no cluster size changes (longer than the model's context, more KV blocks than
a replica has) are left out of the percentiles, as in every summary, and reported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..cluster import QUEUE_FULL
from ..errors import KvsimError, echo

METRICS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "queue": "queue_s",
           "job": "job_latency_s"}  # fmt: skip
STATISTICS = ("p50", "p90", "p99", "mean")
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_TERM = re.compile(
    r"(?P<metric>[a-z0-9]+)_(?P<stat>[a-z0-9]+)=(?P<num>[0-9.eE+-]+)(?P<unit>[a-zµ]*)"
)


@dataclass(frozen=True)
class Term:
    """One objective: ``summary[metric][statistic] <= limit_s``."""

    metric: str
    """summary.json's key (``ttft_s``)."""
    statistic: str
    limit_s: float

    @property
    def name(self) -> str:
        """``ttft_s.p99``: the results-table column it reads."""
        return f"{self.metric}.{self.statistic}"

    def text(self) -> str:
        short = next(k for k, v in METRICS.items() if v == self.metric)
        return f"{short} {self.statistic} ≤ {_seconds(self.limit_s)}"


def _seconds(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def parse_slo(text: str) -> tuple[Term, ...]:
    """``ttft_p99=2s,tpot_p99=100ms`` as terms; a bad term is a one-line error."""
    terms = []
    for raw in text.split(","):
        part = raw.strip()
        m = _TERM.fullmatch(part)
        where = f"--slo {echo(part, 80)}"
        if m is None:
            raise KvsimError(
                f"{where}: expected <metric>_<statistic>=<limit>, e.g. ttft_p99=2s or "
                "tpot_p99=100ms"
            )
        metric, stat, unit = m["metric"], m["stat"], m["unit"] or "s"
        if metric not in METRICS:
            raise KvsimError(f"{where}: metric {metric!r}; allowed: {', '.join(METRICS)}")
        if stat not in STATISTICS:
            raise KvsimError(f"{where}: statistic {stat!r}; allowed: {', '.join(STATISTICS)}")
        if unit not in _UNITS:
            raise KvsimError(f"{where}: unit {unit!r}; allowed: s, ms, us")
        try:
            limit = float(m["num"]) * _UNITS[unit]
        except ValueError:
            limit = math.nan
        if not (math.isfinite(limit) and limit > 0):
            raise KvsimError(f"{where}: the limit must be a positive number")
        term = Term(METRICS[metric], stat, limit)
        if any(t.name == term.name for t in terms):
            raise KvsimError(f"{where}: {term.name} is given twice")
        terms.append(term)
    return tuple(terms)


def default_slo(scenario) -> tuple[Term, ...]:
    """The scenario's own SLO as p99 objectives."""
    return (Term("ttft_s", "p99", scenario.slo.ttft_s), Term("tpot_s", "p99", scenario.slo.tpot_s))


def verdict(terms: tuple[Term, ...], summary: dict) -> tuple[bool, list[str]]:
    """Whether a run's summary meets the SLO, and why not (one reason per failed term)."""
    reasons = []
    rejected = summary.get("drop_reasons", {}).get(QUEUE_FULL, 0)
    if rejected:
        reasons.append(f"{rejected} requests rejected by a full queue")
    if not summary.get("finished"):
        reasons.append("no request finished")
    for t in terms:
        v = summary.get(t.metric, {}).get(t.statistic)
        if v is None or not math.isfinite(v):
            if t.metric == "tpot_s" and summary.get("finished"):
                continue  # only one-token answers: no TPOT to exceed
            reasons.append(f"{t.name} undefined")
        elif v > t.limit_s:
            reasons.append(f"{t.name} {_seconds(v)} > {_seconds(t.limit_s)}")
    return not reasons, reasons


def stress(terms: tuple[Term, ...], summary: dict) -> float:
    """The largest value / limit over the terms (≤ 1 when they all hold): how close to the SLO a
    run is; infinity for a run with nothing to measure."""
    worst = 0.0
    for t in terms:
        v = summary.get(t.metric, {}).get(t.statistic)
        if v is None or not math.isfinite(v):
            continue
        worst = max(worst, v / t.limit_s)
    return worst if summary.get("finished") else math.inf
