"""Bounded digests of a run's request records, which the report draws: memory independent of the
number of requests.

One streaming pass over the packed records (``Results.records()``, 4,096 rows at a time) fills
fixed-size arrays:

- a histogram of each latency (TTFT, TPOT, E2E, queueing delay, job latency) over log-spaced
  bins, :data:`BINS_PER_DECADE` per decade from :data:`LOW_S` to :data:`HIGH_S` (values below
  the first edge, zeros included, count in bin 0; above the last, in the last): a CDF read from
  it is exact at the bin edges, to a relative 10^(1/100) − 1 = 2.3% in between;
- per time bin (:data:`TIME_BINS` equal bins from 0 to the run's last event): requests arrived
  and finished, output tokens finished, content units and hit units and preemptions by arrival,
  and a histogram of TTFT by arrival bin over the same log bins (for p50 and p99 over the run).

Counts are integers and bins fixed, so a digest — and the report — is the same bytes on every run.
"""

from __future__ import annotations

import numpy as np

from .metrics import NS, F

LOW_S = 1e-6
HIGH_S = 1e6
BINS_PER_DECADE = 100
LOG_BINS = int(round(np.log10(HIGH_S / LOW_S))) * BINS_PER_DECADE
TIME_BINS = 120
LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "queue_s", "job_latency_s", "handoff_s")
"""The hand-off's (prefill done to the decode replica's first token) only with one."""

# Columns of the packed records (recorder.FIELDS).
_ARR, _FIRST, _FIN, _OUT, _UNITS, _HIT_UNITS, _PRE, _STATUS, _JOB, _QUEUE = (
    F[name] for name in ("arrival_ns", "first_ns", "finish_ns", "output_tokens", "units",
                         "hit_units", "preemptions", "status", "job_ns", "queue_ns")
)  # fmt: skip
_HANDOFF, _CPU_HITS = F["handoff_ns"], F["cpu_hit_units"]


def edges_s() -> np.ndarray:
    """The upper edges of the log bins, in seconds (bin i holds values up to edge i)."""
    return LOW_S * 10.0 ** ((np.arange(LOG_BINS) + 1) / BINS_PER_DECADE)


def log_bin(seconds: np.ndarray) -> np.ndarray:
    """The log bin of each value (seconds): values below the first edge in bin 0."""
    with np.errstate(divide="ignore"):
        b = np.ceil(np.log10(np.maximum(seconds, LOW_S) / LOW_S) * BINS_PER_DECADE) - 1
    return np.clip(b, 0, LOG_BINS - 1).astype(np.int64)


def cdf_points(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges, share of values at or below) of a log-bin histogram: the lower edge of the first
    bin that holds a value at share 0 (so that values all in one bin still draw their step), then
    the upper edges of the bins up to the last that holds one; empty without values."""
    nz = np.flatnonzero(hist)
    if nz.size == 0:
        return np.array([]), np.array([])
    lo, hi = nz[0], nz[-1] + 1
    cum = np.cumsum(hist)[lo:hi]
    edges = edges_s()
    first = edges[lo - 1] if lo else LOW_S
    return np.concatenate(([first], edges[lo:hi])), np.concatenate(([0.0], cum / cum[-1]))


class Digest:
    """The bounded arrays the report draws (see the module docstring)."""

    def __init__(self, end_s: float):
        self.end_s = max(end_s, 1e-9)
        """The time axis spans [0, end_s]: the run's last finish or drop."""
        self.width_s = self.end_s / TIME_BINS
        """Width of a time bin."""
        self.hist = {m: np.zeros(LOG_BINS, np.int64) for m in LATENCIES}
        """Per latency, requests per log bin."""
        z = np.zeros(TIME_BINS, np.int64)
        self.arrived, self.finished, self.output_tokens = z.copy(), z.copy(), z.copy()
        self.units, self.hit_units, self.preemptions = z.copy(), z.copy(), z.copy()
        self.cpu_hit_units = z.copy()
        """Of the hit units, those found in a CPU tier (zeros without one)."""
        self.ttft_by_time = np.zeros((TIME_BINS, LOG_BINS), np.int64)
        """TTFT histogram per arrival bin."""

    def _time_bin(self, ns: np.ndarray) -> np.ndarray:
        return np.minimum((ns / NS / self.width_s).astype(np.int64), TIME_BINS - 1)

    def add(self, raw: np.ndarray) -> None:
        """Count a chunk of packed records."""
        done = raw[:, _STATUS] < 0
        d = raw[done]
        arr_bin = self._time_bin(raw[:, _ARR])
        self.arrived += np.bincount(arr_bin, minlength=TIME_BINS)
        self.units += np.bincount(arr_bin, raw[:, _UNITS], TIME_BINS).astype(np.int64)
        self.hit_units += np.bincount(arr_bin, raw[:, _HIT_UNITS], TIME_BINS).astype(np.int64)
        self.preemptions += np.bincount(arr_bin, raw[:, _PRE], TIME_BINS).astype(np.int64)
        if raw.shape[1] > _CPU_HITS:
            self.cpu_hit_units += np.bincount(arr_bin, raw[:, _CPU_HITS], TIME_BINS).astype(
                np.int64
            )
        fin_bin = self._time_bin(d[:, _FIN])
        self.finished += np.bincount(fin_bin, minlength=TIME_BINS)
        self.output_tokens += np.bincount(fin_bin, d[:, _OUT], TIME_BINS).astype(np.int64)
        ttft = (d[:, _FIRST] - d[:, _ARR]) / NS
        multi = d[:, _OUT] > 1
        tpot = (d[multi, _FIN] - d[multi, _FIRST]) / NS / (d[multi, _OUT] - 1)
        jobs = raw[raw[:, _JOB] >= 0, _JOB] / NS
        values = {
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_s": (d[:, _FIN] - d[:, _ARR]) / NS,
            "queue_s": d[:, _QUEUE] / NS,
            "job_latency_s": jobs,
        }
        if raw.shape[1] > _HANDOFF:
            handoff = d[:, _HANDOFF]
            values["handoff_s"] = handoff[handoff >= 0] / NS
        for m, v in values.items():
            self.hist[m] += np.bincount(log_bin(v), minlength=LOG_BINS)
        flat = arr_bin[done] * LOG_BINS + log_bin(ttft)
        self.ttft_by_time += np.bincount(flat, minlength=TIME_BINS * LOG_BINS).reshape(
            TIME_BINS, LOG_BINS
        )

    # ---- what the charts read ------------------------------------------------------------------
    def mid_s(self) -> np.ndarray:
        """Time bins' centres."""
        return (np.arange(TIME_BINS) + 0.5) * self.width_s

    def cdf(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The CDF of ``metric`` (see :func:`cdf_points`)."""
        return cdf_points(self.hist[metric])

    def ttft_quantiles(self, q: float) -> np.ndarray:
        """The q-quantile of TTFT per arrival bin (the upper edge of the log bin that holds it;
        NaN for a bin without finished requests)."""
        cum = np.cumsum(self.ttft_by_time, axis=1)
        total = cum[:, -1]
        out = np.full(TIME_BINS, np.nan)
        has = total > 0
        # the smallest bin whose cumulative count reaches ceil(q · n)
        rank = np.ceil(q * total[has]).clip(min=1)
        idx = (cum[has] < rank[:, None]).sum(axis=1)
        out[has] = edges_s()[idx]
        return out


def digest(results) -> Digest:
    """One streaming pass over ``results``' records."""
    d = Digest(results.end_s)
    for raw in results.records():
        d.add(raw)
    return d
