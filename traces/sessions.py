"""Closed-loop workload generators: long-context multi-turn sessions and agent jobs.

**Sessions** (the setting of AsymCache, arXiv 2606.02964 §6: LongBench- and LooGLE-like multi-turn
long-context question answering). A session is a conversation over one long document: turn k's
prompt is a system prompt shared by every session, the session's document, then every earlier
question and answer, then question k. Sessions start by a Gamma process (CV 0.25 by default) at
rate λ = rate / mean turns; within a session the next question arrives a think time after the
previous answer, Gamma-distributed with mean ``dispersion`` / λ: the *dispersion* is the ratio of
the inter-session to the intra-session arrival rate (5 low, 10 high in the paper), so a higher
dispersion interleaves more sessions and stretches the intervals between a session's reuses. Hits
then cluster at both ends of a prompt: the shared system prompt, and the session's history.

**Agent jobs** (as in Continuum, arXiv 2511.02230): an agent's LLM calls are chained by tool
calls. Call k's prompt is the task prompt, every earlier call's output and tool result, and the
k-th result; the next call arrives a sampled tool-call duration after the previous finishes.

Token streams are cut into content units; a unit's chain id names its position in its session
(the system prompt's units are shared by all), so a later turn reuses everything its earlier
turns cached. Questions, answers and tool results are whole units, so every turn starts on a unit
boundary and its answer's units can join the cache (``output_blocks``). Sessions are generated
lazily, one at a time, each with all its turns (consecutive, as ``Workload`` expects).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .generators import LengthDist
from .request import Request

_SESSION_IDS = 10**9  # chain ids of session s: (s + 1)·10⁹ + unit index (system prompt: 1, 2, …)


@dataclass(frozen=True)
class Duration:
    """A duration distribution in seconds: ``fixed`` (value_s) or ``lognormal`` (median_s,
    sigma)."""

    kind: str = "lognormal"
    value_s: float = 1.0
    median_s: float = 1.0
    sigma: float = 1.0

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "fixed":
            return self.value_s
        return float(rng.lognormal(math.log(self.median_s), self.sigma))


def mean_of(dist: LengthDist) -> float:
    """The mean of a length distribution (before clipping)."""
    if dist.kind == "fixed":
        return float(dist.value)
    if dist.kind == "uniform":
        return (dist.low + dist.high) / 2
    return dist.median * math.exp(dist.sigma**2 / 2)


def _units(tokens: int, unit: int) -> int:
    return max(1, round(tokens / unit))


def _system_prompt(tokens: int, unit: int) -> list[int]:
    """The shared system prompt's chain ids (1, 2, …), empty without one."""
    return list(range(1, _units(tokens, unit) + 1)) if tokens else []


def _gamma(rng: np.random.Generator, mean: float, cv: float) -> float:
    """One Gamma draw with the given mean and coefficient of variation."""
    shape = 1.0 / (cv * cv)
    return float(rng.gamma(shape, mean / shape))


def _chain(session: int, start: int, n: int) -> list[int]:
    base = (session + 1) * _SESSION_IDS
    return list(range(base + start, base + start + n))


def long_context_sessions(
    requests: int,
    rate: float,
    context: LengthDist,
    turns: LengthDist,
    question_tokens: LengthDist,
    output_tokens: int,
    system_prompt_tokens: int = 1024,
    dispersion: float = 5.0,
    start_cv: float = 0.25,
    think_cv: float = 0.25,
    unit_tokens: int = 64,
    seed: int = 0,
) -> Iterator[Request]:
    """Stream ``requests`` turns of long-context sessions (see the module docstring); the same
    arguments give the same requests."""
    rng = np.random.default_rng(seed)
    u = unit_tokens
    out_units = _units(output_tokens, u)
    system = _system_prompt(system_prompt_tokens, u)
    mean_turns = max(1.0, mean_of(turns))
    start_gap = mean_turns / rate  # the session start rate λ = rate / mean turns
    think_mean = dispersion * start_gap  # λ_intra = λ / dispersion
    made, t, session = 0, 0.0, 0
    while made < requests:
        t += _gamma(rng, start_gap, start_cv)
        n_turns = max(1, int(turns.sample(rng, 1)[0]))
        history = system + _chain(session, 0, _units(int(context.sample(rng, 1)[0]), u))
        for k in range(min(n_turns, requests - made)):
            q = _units(int(question_tokens.sample(rng, 1)[0]), u)
            prompt_ids = history + _chain(session, len(history), q)
            answer = _chain(session, len(prompt_ids), out_units)
            think = _gamma(rng, think_mean, think_cv) if k else 0.0
            yield Request(made, t, len(prompt_ids) * u, out_units * u, tuple(prompt_ids), u,
                          tuple(answer), session, None, k, think)  # fmt: skip
            history = prompt_ids + answer
            made += 1
        session += 1


def agent_jobs(
    requests: int,
    rate: float,
    task_tokens: LengthDist,
    calls: LengthDist,
    output_tokens: LengthDist,
    tool_result_tokens: LengthDist,
    tool_s: Duration,
    system_prompt_tokens: int = 2048,
    start_cv: float = 1.0,
    unit_tokens: int = 64,
    seed: int = 0,
) -> Iterator[Request]:
    """Stream ``requests`` LLM calls of agent jobs; job starts arrive by a Gamma process at
    rate / mean calls per job, a call arrives ``tool_s`` after the previous call finishes."""
    rng = np.random.default_rng(seed)
    u = unit_tokens
    system = _system_prompt(system_prompt_tokens, u)
    start_gap = max(1.0, mean_of(calls)) / rate
    made, t, job = 0, 0.0, 0
    while made < requests:
        t += _gamma(rng, start_gap, start_cv)
        n_calls = max(1, int(calls.sample(rng, 1)[0]))
        context = system + _chain(job, 0, _units(int(task_tokens.sample(rng, 1)[0]), u))
        for k in range(min(n_calls, requests - made)):
            out = _chain(job, len(context), _units(int(output_tokens.sample(rng, 1)[0]), u))
            gap = tool_s.sample(rng) if k else 0.0
            yield Request(made, t, len(context) * u, len(out) * u, tuple(context), u, tuple(out),
                          job, job, k, gap)  # fmt: skip
            result = _units(int(tool_result_tokens.sample(rng, 1)[0]), u)
            context = context + out + _chain(job, len(context) + len(out), result)
            made += 1
        job += 1
