"""``kvsim plan``: capacity questions answered by searching over simulations (DESIGN §8).

- ``--rate R``: the fewest replicas (GPUs = replicas × tensor parallel) that meet the SLO at R
  requests per second.
- ``--replicas N``: the highest rate N replicas serve within the SLO (its goodput: requests
  meeting the SLO per second), to a relative tolerance.
- With a prefill and a decode pool (``pools:``), ``--rate R``: the fewest replicas N = prefill +
  decode such that some split meets the SLO, and the best split of N. Every N the search evaluates
  is evaluated at each of its splits p:(N − p), p = 1 … N − 1 (N − 1 simulations, run together);
  N meets when one of them does. Assuming a replica added to either pool never hurts, "some split
  of N meets" is monotone in N, so the fewest-replicas search applies unchanged (from N = 2). Of
  the answer's splits that meet, the best is the one furthest inside the SLO: the smallest
  largest value / limit over the terms, then the higher goodput, then fewer prefill replicas.

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


@dataclass(frozen=True)
class Pools:
    """A disaggregated scenario's prefill and decode pools (names as ``--set`` addresses them)."""

    prefill: str
    decode: str
    tp_prefill: int
    tp_decode: int

    def gpus(self, split: tuple[int, int]) -> int:
        return split[0] * self.tp_prefill + split[1] * self.tp_decode


@dataclass
class PlanPoint:
    """One simulation of the search."""

    index: int
    round: int
    value: float
    """Replicas (fewest; prefill + decode with pools) or requests per second (highest)."""
    overrides: tuple[str, ...]
    summary: dict
    meets: bool
    reasons: list[str]
    split: tuple[int, int] | None = None
    """(prefill, decode) replicas with pools; None for one unified pool."""


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
    pools: Pools | None = None
    """The prefill and decode pools whose split is searched; None: one unified pool."""

    def point(self, value) -> PlanPoint | None:
        """The point at ``value``; with pools, its best split (:func:`best`)."""
        if self.pools is not None:
            return best([p for p in self.points if p.value == value], self.question.slo)
        return next((p for p in self.points if p.value == value), None)

    def gpus(self, point: PlanPoint) -> int:
        if point.split is not None:
            return self.pools.gpus(point.split)
        replicas = point.value if self.question.knob == "replicas" else self.question.replicas
        return replicas * self.tensor_parallel


def best(points: list[PlanPoint], terms: tuple[Term, ...]) -> PlanPoint | None:
    """Of one total's splits, the best: of those that meet (else of all), the smallest largest
    value / limit, then the highest goodput, then the fewest prefill replicas."""
    if not points:
        return None
    met = [p for p in points if p.meets] or points
    return min(met, key=lambda p: (stress(terms, p.summary),
                                   -(p.summary.get("slo", {}).get("goodput_requests_per_s") or 0),
                                   p.split or (0, 0)))  # fmt: skip


def _pools(scenario) -> Pools | None:
    if not scenario.disaggregated:
        return None
    specs = {s.role: s for s in scenario.pool_specs()}
    pre, dec = specs["prefill"], specs["decode"]
    return Pools(pre.name, dec.name, pre.tensor_parallel, dec.tensor_parallel)


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
    pools = _pools(scenario)
    if pools is not None and q.replicas is not None:
        raise KvsimError(
            f"{q.scenario}: --replicas: the scenario has a prefill and a decode pool; plan their "
            "split with --rate R, or set each pool's replicas (--set pools.<name>.replicas=N) "
            "and run it"
        )
    specs = scenario.pool_specs()
    unified = specs[0].name if scenario.pools and pools is None else None
    plan = Plan(q, search.Outcome(None, None, None), trace_rate=trace_rate,
                tensor_parallel=specs[0].tensor_parallel, rate=rate, pools=pools)  # fmt: skip

    def rate_set(rate: float) -> str:
        if trace_rate is not None:
            return f"workload.rate_scale={_rate_text(rate / trace_rate)}"
        return f"workload.rate={_rate_text(rate)}"

    def replicas_set(n: int) -> tuple[str, ...]:
        if unified is not None:  # one unified pool given as pools:
            return (f"pools.{unified}.replicas={n}",)
        return (f"cluster.replicas={n}",)

    def runs_for(value) -> list[tuple[tuple[int, int] | None, tuple[str, ...]]]:
        """The (split, overrides) of each simulation evaluating ``value``."""
        if pools is not None:
            return [((p, value - p), (*q.overrides, f"pools.{pools.prefill}.replicas={p}",
                                      f"pools.{pools.decode}.replicas={value - p}",
                                      rate_set(rate)))
                    for p in range(1, value)]  # fmt: skip
        if q.knob == "replicas":
            return [(None, (*q.overrides, *replicas_set(value), rate_set(rate)))]
        return [(None, (*q.overrides, *replicas_set(q.replicas), rate_set(value)))]

    with Evaluator(q, workers) as ev:

        def check(values: list, round_: int) -> list[bool]:
            if progress:
                shown = ", ".join(str(v) if q.knob == "replicas" else _rate_text(v)
                                  for v in values)  # fmt: skip
                print(f"kvsim: plan round {round_ + 1}: {q.knob} {shown}", file=sys.stderr)
            runs = [(v, split, o) for v in values for split, o in runs_for(v)]
            summaries = ev.summaries([o for _, _, o in runs])
            met: dict = dict.fromkeys(values, False)
            for (v, split, o), summary in zip(runs, summaries, strict=True):
                ok, reasons = verdict(q.slo, summary)
                plan.points.append(PlanPoint(len(plan.points), round_, v, o, summary, ok,
                                             reasons, split))  # fmt: skip
                met[v] = met[v] or ok
            return [met[v] for v in values]

        if q.knob == "replicas":
            start = sum(s.replicas for s in specs)
            plan.outcome = search.fewest(start, q.max_replicas, check, q.probes,
                                         low=2 if pools is not None else 1)  # fmt: skip
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
            split = "" if p.split is None else f"{_split_text(plan, p)}: "
            lines.append(f"answer: {o.answer} replica{'s' * (o.answer > 1)} "
                         f"({plan.gpus(p)} GPUs): {split}{_figures(q.slo, p.summary)}")  # fmt: skip
            below = plan.point(o.lo)
            if below is not None:
                closest = "" if below.split is None else f" (closest: {_split_text(plan, below)})"
                lines.append(f"        {o.lo} fail{closest}: {'; '.join(below.reasons)}")
            if p.split is None:
                lines.append("        exact (an integer), if more replicas never hurt")
            else:
                lines.append("        exact (an integer), if a replica added to either pool "
                             "never hurts; the split: of the "
                             f"{sum(1 for x in plan.points if x.value == o.answer and x.meets)} "
                             f"of {o.answer - 1} splits that meet, the furthest inside the "
                             "SLO")  # fmt: skip
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


def _split_text(plan: Plan, p: PlanPoint) -> str:
    return f"{p.split[0]} {plan.pools.prefill} + {p.split[1]} {plan.pools.decode}"


def _figures(terms: tuple[Term, ...], summary: dict) -> str:
    parts = []
    for t in terms:
        v = summary.get(t.metric, {}).get(t.statistic)
        shown = "-" if v is None or not math.isfinite(v) else (
            f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.3g} s")  # fmt: skip
        parts.append(f"{t.name} {shown}")
    parts.append(f"worst {stress(terms, summary):.0%} of its limit")
    return ", ".join(parts)
