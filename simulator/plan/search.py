"""Searches over simulations: the fewest replicas that meet an SLO, the highest rate that does.

Both assume the predicate is monotone (more replicas never hurt; a higher rate never helps) and
work in rounds: each round evaluates a fixed number of probes (:data:`PROBES`) together — in
parallel where workers are available — so the points tried, and the answer, do not depend on how
many workers ran them.

- **Fewest (integer)**: bracket by galloping (x0; if it fails, 2·x0, 4·x0, … up to a bound), then
  narrow the bracket (lo fails, hi meets) with probes evenly spaced inside it until hi − lo = 1.
  The answer is exact: hi, the smallest value that met.
- **Highest (real)**: bracket by galloping up (×2) from a start that meets, or down (÷2) from one
  that fails; narrow with probes spaced geometrically inside (lo meets, hi fails) until
  hi / lo − 1 ≤ the relative tolerance. The answer is lo: the true highest lies in [lo, hi).

Where results are not monotone (a value that met beside a larger one that failed, as noise in
a finite simulation can make), the bracket ends at the smallest value that met (fewest) or the
smallest value that failed (highest), the search says so (``Outcome.monotone``) and the points
are there to look at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

PROBES = 3
"""Values evaluated per round (together)."""


@dataclass
class Outcome:
    """What a search found: the answer (None if no value met / every value met up to the
    bound) and the final bracket."""

    answer: float | int | None
    lo: float | int | None
    """fewest: the largest value below the answer that failed (low − 1: none tried); highest: the
    answer."""
    hi: float | int | None
    """fewest: the answer; highest: the smallest value above the answer that failed."""
    rounds: int = 0
    monotone: bool = True
    """False if some value met while a smaller (fewest) or larger (highest) one failed."""
    results: dict = field(default_factory=dict)
    """Every value evaluated: whether it met."""


class _Rounds:
    def __init__(self, check: Callable[[list, int], list[bool]]):
        self.check = check
        self.results: dict = {}
        self.rounds = 0

    def run(self, values: list) -> None:
        new = sorted({v for v in values if v not in self.results})
        if not new:
            return
        for v, ok in zip(new, self.check(new, self.rounds), strict=True):
            self.results[v] = ok
        self.rounds += 1


def fewest(start: int, upper: int, check: Callable[[list, int], list[bool]],
           probes: int = PROBES, low: int = 1) -> Outcome:  # fmt: skip
    """The smallest integer in [low, upper] for which ``check`` holds. ``check(values, round)``
    evaluates a round's values and returns whether each met."""
    r = _Rounds(check)
    start = max(low, min(start, upper))
    r.run([start])
    lo, hi = low - 1, None
    if r.results[start]:
        hi = start
    else:
        lo = start
        while hi is None:
            if lo >= upper:
                return Outcome(None, lo, None, r.rounds, _monotone_up(r.results), r.results)
            cands = sorted({min(lo * 2**k, upper) for k in range(1, probes + 1)})
            r.run(cands)
            met = [c for c in cands if r.results[c]]
            if met:
                hi = min(met)
                lo = max([c for c in cands if c < hi] + [lo])
            else:
                lo = max(cands)
    while hi - lo > 1:
        step = (hi - lo) / (probes + 1)
        cands = sorted({lo + max(1, round(step * k)) for k in range(1, probes + 1)} - {hi})
        cands = [c for c in cands if lo < c < hi]
        r.run(cands)
        hi = min([c for c in cands if r.results[c]] + [hi])
        lo = max([c for c in cands if c < hi and not r.results[c]] + [lo])
    return Outcome(hi, lo, hi, r.rounds, _monotone_up(r.results), r.results)


def _monotone_up(results: dict) -> bool:
    """No value met below one that failed."""
    met = [v for v, ok in results.items() if ok]
    failed = [v for v, ok in results.items() if not ok]
    return not met or not failed or min(met) > max(failed)


def _round_sig(x: float) -> float:
    return float(f"{x:.6g}")


def highest(start: float, low: float, high: float, tolerance: float,
            check: Callable[[list, int], list[bool]], probes: int = PROBES) -> Outcome:  # fmt: skip
    """The largest real in [low, high] for which ``check`` holds, to a relative ``tolerance``:
    the answer lo met and lo·(1 + tolerance) ≥ hi, the smallest value above it that failed.
    Values are rounded to 6 significant digits (they become ``--set`` texts)."""
    r = _Rounds(check)
    start = _round_sig(min(max(start, low), high))
    r.run([start])
    lo = hi = None
    if r.results[start]:
        lo = start
        while hi is None:
            if lo >= high:
                return Outcome(None, lo, None, r.rounds, _monotone_down(r.results), r.results)
            cands = sorted({_round_sig(min(lo * 2**k, high)) for k in range(1, probes + 1)})
            r.run(cands)
            failed = [c for c in cands if not r.results[c]]
            if failed:
                hi = min(failed)
                lo = max([c for c in cands if c < hi] + [lo])
            else:
                lo = max(cands)
    else:
        hi = start
        while lo is None:
            if hi <= low:
                return Outcome(None, None, hi, r.rounds, _monotone_down(r.results), r.results)
            cands = sorted({_round_sig(max(hi / 2**k, low)) for k in range(1, probes + 1)})
            r.run(cands)
            met = [c for c in cands if r.results[c]]
            if met:
                hi = min([c for c in cands if not r.results[c] and c > max(met)] + [hi])
                lo = max(c for c in met if c < hi)
            else:
                hi = min(cands)
    while hi / lo - 1 > tolerance:
        ratio = (hi / lo) ** (1 / (probes + 1))
        cands = sorted({_round_sig(lo * ratio**k) for k in range(1, probes + 1)})
        cands = [c for c in cands if lo < c < hi]
        if not cands:  # rounding left nothing between them
            break
        r.run(cands)
        hi = min([c for c in cands if not r.results[c]] + [hi])
        lo = max([c for c in cands if c < hi and r.results[c]] + [lo])
    return Outcome(lo, lo, hi, r.rounds, _monotone_down(r.results), r.results)


def _monotone_down(results: dict) -> bool:
    """No value met above one that failed."""
    met = [v for v, ok in results.items() if ok]
    failed = [v for v, ok in results.items() if not ok]
    return not met or not failed or max(met) < min(failed)
