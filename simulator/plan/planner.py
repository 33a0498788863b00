"""``kvsim plan``: capacity questions answered by searching over simulations (DESIGN §8).

- ``--rate R``: the fewest replicas (GPUs = replicas × tensor parallel) that meet the SLO at R
  requests per second.
- ``--replicas N``: the highest rate N replicas serve within the SLO (its goodput: requests
  meeting the SLO per second), to a relative tolerance.

A point of the search is the scenario with ``--set`` overrides (``cluster.replicas=N``, and
``workload.rate=R`` — or, for a trace, ``workload.rate_scale`` = R / the trace's mean rate), run as
``kvsim run`` would; only its summary is kept. Each round's points are simulated together on a
pool of processes (the sweep's, ``sweep.execute.pool_context``); which points a search tries
depends only on the results, not on the workers (``search``), so a plan is deterministic.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KvsimError
from ..scenario import TraceWorkload, load_scenario
from . import search
from .slo import Term, stress, verdict

MAX_RATE = 1e6
MIN_RATE = 1e-3


@dataclass(frozen=True)
class Question:
    """What to plan and from where."""

    scenario: Path
    slo: tuple[Term, ...]
    rate: float | None
    """Requests per second: the rate to plan for (fewest replicas), or where the rate search
    starts (highest rate); None: the scenario's own."""
    replicas: int | None
    """Fixed replicas: search the highest rate; None: search the fewest replicas."""
    overrides: tuple[str, ...] = ()
    policy_path: tuple[str, ...] = ()
    max_replicas: int = 256
    tolerance: float = 0.02
    probes: int = search.PROBES
    hardware_files: tuple[str, ...] = ()

    @property
    def knob(self) -> str:
        return "replicas" if self.replicas is None else "rate"


@dataclass
class PlanPoint:
    """One simulation of the search."""

    index: int
    round: int
    value: float
    """Replicas (fewest) or requests per second (highest)."""
    overrides: tuple[str, ...]
    summary: dict
    meets: bool
    reasons: list[str]


@dataclass
class Plan:
    """A search's answer and every point it tried (in evaluation order)."""

    question: Question
    outcome: search.Outcome
    points: list[PlanPoint] = field(default_factory=list)
    trace_rate: float | None = None
    """A trace's own mean rate (rates become rate_scale = rate / this)."""
    tensor_parallel: int = 1
    rate: float = math.nan
    """The rate planned for (fewest replicas), or the rate search's start (highest)."""

    def point(self, value) -> PlanPoint | None:
        return next((p for p in self.points if p.value == value), None)


def trace_mean_rate(scenario) -> float:
    """A trace's requests per second over its span (before ``rate_scale``)."""
    from kvsim.traces import TraceError, read_trace, trace_stats

    try:
        stats = trace_stats(read_trace(scenario.trace_path(), scenario.workload.format))
    except TraceError as e:
        raise KvsimError(str(e)) from None
    if not (stats.duration_s > 0):
        raise KvsimError(
            f"{scenario.trace_path()}: its requests arrive at one instant: it has no rate to plan"
        )
    return stats.rate_per_s


def _rate_text(x: float) -> str:
    return f"{x:.6g}"


def summary_point(task: tuple) -> tuple[int, dict | None, str | None]:
    """Simulate one point (in a pool worker): (index, its summary, None) or (index, None, the
    error line)."""
    from kvsim.traces import TraceError

    from ..cluster import simulate

    index, base, overrides, policy_path, hardware_files = task
    try:
        scenario = load_scenario(base, list(overrides), policy_path, None, hardware_files)
        summary = simulate(scenario).summary
    except (KvsimError, TraceError) as e:
        return index, None, str(e)
    return index, summary, None


class Evaluator:
    """Simulates a round's points: in this process, or on a pool of ``workers`` processes."""

    def __init__(self, question: Question, workers: int):
        self.q = question
        self.workers = workers
        self._pool = None

    def __enter__(self) -> Evaluator:
        if self.workers > 1:
            from ..sweep.execute import pool_context, worker_init

            self._pool = pool_context().Pool(self.workers, initializer=worker_init)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def summaries(self, points: list[tuple[str, ...]]) -> list[dict]:
        base = str(self.q.scenario.resolve())
        paths = tuple(str(Path(d).resolve()) for d in self.q.policy_path)
        hw = self.q.hardware_files
        tasks = [(i, base, overrides, paths, hw) for i, overrides in enumerate(points)]
        if self._pool is None:
            results = [summary_point(t) for t in tasks]
        else:
            results = self._pool.map(summary_point, tasks, chunksize=1)
        out: list[dict] = []
        for (_, summary, error), overrides in zip(results, points, strict=True):  # in order
            if error is not None:
                shown = " ".join(f"--set {o}" for o in overrides)
                raise KvsimError(f"{self.q.scenario}: plan point ({shown}): {error}")
            out.append(summary)
        return out


def run_plan(question: Question, workers: int = 1, progress: bool = False) -> Plan:
    """Answer the question (see the module docstring)."""
    q = question
    scenario = load_scenario(q.scenario, list(q.overrides), q.policy_path, None,
                             q.hardware_files)  # fmt: skip
    is_trace = isinstance(scenario.workload, TraceWorkload)
    trace_rate = trace_mean_rate(scenario) if is_trace else None
    rate = q.rate if q.rate is not None else _scenario_rate(scenario, trace_rate)
    plan = Plan(q, search.Outcome(None, None, None), trace_rate=trace_rate,
                tensor_parallel=scenario.cluster.tensor_parallel, rate=rate)  # fmt: skip

    def rate_set(rate: float) -> str:
        if trace_rate is not None:
            return f"workload.rate_scale={_rate_text(rate / trace_rate)}"
        return f"workload.rate={_rate_text(rate)}"

    def overrides_for(value) -> tuple[str, ...]:
        if q.knob == "replicas":
            return (*q.overrides, f"cluster.replicas={value}", rate_set(rate))
        return (*q.overrides, f"cluster.replicas={q.replicas}", rate_set(value))

    with Evaluator(q, workers) as ev:

        def check(values: list, round_: int) -> list[bool]:
            if progress:
                shown = ", ".join(str(v) if q.knob == "replicas" else _rate_text(v)
                                  for v in values)  # fmt: skip
                print(f"kvsim: plan round {round_ + 1}: {q.knob} {shown}", file=sys.stderr)
            sets = [overrides_for(v) for v in values]
            oks = []
            for v, o, summary in zip(values, sets, ev.summaries(sets), strict=True):
                ok, reasons = verdict(q.slo, summary)
                plan.points.append(PlanPoint(len(plan.points), round_, v, o, summary, ok,
                                             reasons))  # fmt: skip
                oks.append(ok)
            return oks

        if q.knob == "replicas":
            plan.outcome = search.fewest(scenario.cluster.replicas, q.max_replicas, check,
                                         q.probes)  # fmt: skip
        else:
            plan.outcome = search.highest(rate, MIN_RATE, MAX_RATE, q.tolerance, check,
                                          q.probes)  # fmt: skip
    return plan


def _scenario_rate(scenario, trace_rate: float | None) -> float:
    w = scenario.workload
    if trace_rate is not None:
        return trace_rate * w.rate_scale
    return w.rate


def answer_lines(plan: Plan) -> list[str]:
    """The answer in words, with the point that failed next to it."""
    q, o = plan.question, plan.outcome
    slo = ", ".join(t.text() for t in q.slo)
    tp = plan.tensor_parallel
    if q.knob == "replicas":
        lines = [f"question: the fewest replicas meeting {slo} at {_rate_text(plan.rate)} req/s"]
        if o.answer is None:
            worst = plan.point(o.lo)
            why = f" ({'; '.join(worst.reasons)})" if worst else ""
            lines.append(f"answer: none up to {q.max_replicas} replicas{why}")
        else:
            p = plan.point(o.answer)
            lines.append(f"answer: {o.answer} replica{'s' * (o.answer > 1)} "
                         f"({o.answer * tp} GPUs): {_figures(q.slo, p.summary)}")  # fmt: skip
            below = plan.point(o.lo)
            if below is not None:
                lines.append(f"        {o.lo} fail: {'; '.join(below.reasons)}")
            lines.append("        exact (an integer), if more replicas never hurt")
    else:
        lines = [f"question: the highest rate {q.replicas} replica{'s' * (q.replicas > 1)} "
                 f"({q.replicas * tp} GPUs) serve meeting {slo}"]  # fmt: skip
        if o.answer is None and o.lo is None:
            lines.append(f"answer: none down to {MIN_RATE:g} req/s")
        elif o.answer is None:
            lines.append(f"answer: every rate tried up to {_rate_text(o.lo)} req/s meets it")
        else:
            p = plan.point(o.answer)
            good = p.summary["slo"]["goodput_requests_per_s"]
            lines.append(f"answer: {_rate_text(o.answer)} req/s (goodput {good:.4g} req/s): "
                         f"{_figures(q.slo, p.summary)}")  # fmt: skip
            above = plan.point(o.hi)
            if above is not None:
                lines.append(f"        {_rate_text(o.hi)} req/s fails: {'; '.join(above.reasons)}")
            lines.append(f"        the highest rate meeting it lies in [{_rate_text(o.lo)}, "
                         f"{_rate_text(o.hi)}) req/s (tolerance {q.tolerance:.1%}), if a "
                         "higher rate never helps")  # fmt: skip
    if not o.monotone:
        lines.append("warning: the results are not monotone (in the table, a point that met "
                     "lies beyond one that failed): more requests may steady them")  # fmt: skip
    lines.append(f"search: {len(plan.points)} simulations in {o.rounds} rounds of at most "
                 f"{q.probes}")  # fmt: skip
    return lines


def _figures(terms: tuple[Term, ...], summary: dict) -> str:
    parts = []
    for t in terms:
        v = summary.get(t.metric, {}).get(t.statistic)
        shown = "-" if v is None or not math.isfinite(v) else (
            f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.3g} s")  # fmt: skip
        parts.append(f"{t.name} {shown}")
    parts.append(f"worst {stress(terms, summary):.0%} of its limit")
    return ", ".join(parts)
