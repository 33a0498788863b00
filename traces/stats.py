"""Summary statistics of a trace, including the prefix-hit ratio an unlimited cache would reach."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .request import Request


@dataclass
class TraceStats:
    """What ``kvsim trace stats`` prints."""

    requests: int = 0
    duration_s: float = 0.0
    prompt_percentiles: dict[str, float] = field(default_factory=dict)
    output_percentiles: dict[str, float] = field(default_factory=dict)
    prompt_tokens_total: int = 0
    output_tokens_total: int = 0
    units_total: int = 0
    units_hit: int = 0

    @property
    def rate_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else float("nan")

    @property
    def prefix_hit_ratio(self) -> float:
        """Share of prompt content units that an unlimited prefix cache would hit."""
        return self.units_hit / self.units_total if self.units_total else float("nan")

    def rows(self) -> list[tuple[str, str]]:
        def pct(d):
            return " / ".join(f"{d[k]:.0f}" for k in ("p50", "p90", "p99", "max"))

        return [
            ("requests", f"{self.requests}"),
            ("duration", f"{self.duration_s:.1f} s"),
            ("rate", f"{self.rate_per_s:.3f} req/s"),
            ("prompt tokens p50/p90/p99/max", pct(self.prompt_percentiles)),
            ("output tokens p50/p90/p99/max", pct(self.output_percentiles)),
            ("prompt tokens total", f"{self.prompt_tokens_total}"),
            ("output tokens total", f"{self.output_tokens_total}"),
            (
                "prefix-hit ratio (unlimited cache)",
                "n/a (no block ids)" if not self.units_total else f"{self.prefix_hit_ratio:.1%}",
            ),
        ]


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {k: float("nan") for k in ("p50", "p90", "p99", "max")}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


def trace_stats(requests: Iterable[Request]) -> TraceStats:
    """Read a request stream once and summarize it."""
    s = TraceStats()
    seen: set[int] = set()
    prompts: list[int] = []
    outputs: list[int] = []
    first = last = 0.0
    for r in requests:
        if s.requests == 0:
            first = r.arrival_s
        last = r.arrival_s
        s.requests += 1
        prompts.append(r.prompt_tokens)
        outputs.append(r.output_tokens)
        ids = r.blocks
        # Chain ids: the prefix hit is the run of ids already seen from the start.
        k = 0
        while k < len(ids) and ids[k] in seen:
            k += 1
        s.units_hit += k
        s.units_total += len(ids)
        seen.update(ids)
    s.duration_s = last - first
    s.prompt_tokens_total = int(sum(prompts))
    s.output_tokens_total = int(sum(outputs))
    s.prompt_percentiles = _percentiles(prompts)
    s.output_percentiles = _percentiles(outputs)
    return s
