"""Synthetic workload generators: open-loop arrivals with sampled prompt and output lengths.

Arrivals are Poisson (exponential gaps) or Gamma (gaps with a chosen coefficient of variation, the
usual model of bursty LLM traffic, e.g. BurstGPT, arXiv 2401.17644 §4). Lengths are fixed, uniform
or log-normal, clipped to [min, max]. Optional shared prefixes model system prompts: each request
starts with one of ``prefixes`` shared prefixes (chosen with Zipf-like popularity), whose content
units carry the same chain ids, so a prefix cache can reuse them.

Requests are produced in chunks of numpy draws, so a 200k-request workload streams
in constant memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .request import MAX_TOKENS, Request, TraceError

_CHUNK = 4096


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: ``fixed`` (value), ``uniform`` (low, high) or ``lognormal``
    (median, sigma), clipped to [minimum, maximum]."""

    kind: str = "lognormal"
    value: int = 1024
    low: int = 1
    high: int = 1024
    median: float = 1024.0
    sigma: float = 0.5
    minimum: int = 1
    maximum: int = 1_000_000

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.value, dtype=np.int64)
        elif self.kind == "uniform":
            x = rng.integers(self.low, self.high + 1, size=n)
        elif self.kind == "lognormal":
            # NOTE: clipped as floats before the cast (a huge draw must not wrap around in int64);
            # with integer bounds, rint(clip(x)) == clip(rint(x)).
            x = rng.lognormal(math.log(self.median), self.sigma, size=n)
            return np.rint(np.clip(x, self.minimum, self.maximum)).astype(np.int64)
        else:
            raise TraceError(f"unknown length distribution {self.kind!r}")
        return np.clip(x, self.minimum, self.maximum)

    def check(self, what: str) -> None:
        """One-line :class:`TraceError` unless the parameters describe lengths in
        [1, MAX_TOKENS]."""
        ints = (self.value, self.low, self.high, self.minimum, self.maximum)
        if not all(isinstance(v, int) and 1 <= v <= MAX_TOKENS for v in ints):
            raise TraceError(f"{what}: lengths are integers from 1 to {MAX_TOKENS:,}")
        if self.low > self.high or self.minimum > self.maximum:
            raise TraceError(f"{what}: a lower bound exceeds its upper bound")
        if not (0 < self.median <= MAX_TOKENS and 0 <= self.sigma <= 10):
            raise TraceError(f"{what}: median must be in (0, {MAX_TOKENS:,}], sigma in [0, 10]")


def _gaps(rng: np.random.Generator, arrival: str, rate: float, cv: float, n: int) -> np.ndarray:
    if arrival == "poisson":
        return rng.exponential(1.0 / rate, size=n)
    if arrival == "gamma":
        shape = 1.0 / (cv * cv)
        return rng.gamma(shape, 1.0 / (rate * shape), size=n)
    raise TraceError(f"unknown arrival process {arrival!r}; allowed: poisson, gamma")


def synthetic_requests(
    requests: int,
    rate: float,
    prompt: LengthDist,
    output: LengthDist,
    arrival: str = "poisson",
    cv: float = 1.0,
    prefixes: int = 0,
    prefix_tokens: int = 0,
    zipf_s: float = 1.0,
    unit_tokens: int = 256,
    seed: int = 0,
) -> Iterator[Request]:
    """Stream ``requests`` synthetic requests; identical for identical arguments."""
    if not (math.isfinite(rate) and rate > 0 and math.isfinite(cv) and 0.01 <= cv <= 100):
        raise TraceError(f"rate ({rate!r}) must be finite and > 0, cv ({cv!r}) in [0.01, 100]")
    prompt.check("prompt lengths")
    output.check("output lengths")
    rng = np.random.default_rng(seed)
    prefix_units = prefix_tokens // unit_tokens if prefixes else 0
    # Chain ids: units of prefix p are p*prefix_units + i; unique units follow after all prefixes.
    next_id = prefixes * prefix_units
    if prefixes:
        weights = 1.0 / np.arange(1, prefixes + 1) ** zipf_s
        weights /= weights.sum()
    t = 0.0
    made = 0
    while made < requests:
        n = min(_CHUNK, requests - made)
        gaps = _gaps(rng, arrival, rate, cv, n)
        prompts = prompt.sample(rng, n)
        outputs = output.sample(rng, n)
        which = rng.choice(prefixes, size=n, p=weights).tolist() if prefixes else None
        # NOTE: Python lists, not numpy scalars, in the per-request loop (same values).
        gaps, prompts, outputs = gaps.tolist(), prompts.tolist(), outputs.tolist()
        for k in range(n):
            t += gaps[k]
            own = prompts[k]
            blocks: list[int] = []
            total = own
            if prefixes:
                p = which[k]
                blocks = list(range(p * prefix_units, (p + 1) * prefix_units))
                total = own + prefix_units * unit_tokens
            own_units = math.ceil(total / unit_tokens) - len(blocks)
            blocks.extend(range(next_id, next_id + own_units))
            next_id += own_units
            yield Request(made, t, total, max(1, outputs[k]), tuple(blocks), unit_tokens)
            made += 1
