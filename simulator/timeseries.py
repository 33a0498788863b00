"""Queue lengths over simulated time: waiting and running requests per replica (DESIGN §4,
"sampled time series"), written as ``timeseries.csv`` and drawn in the report.

The sampler steps the SimPy environment itself, one event at a time, and before an event at time
t records every sample time s < t. No event happens strictly between, so a sample at s is the
state after every event at a time ≤ s. Sampling adds no event: the run's results and its end
time are exactly what ``env.run()`` gives. A fast-forwarded decode run changes neither queue
before its boundary, so fast-forward and exact stepping give the same series.

NOTE (memory): at most :data:`MAX_VALUES` integers are kept (two per replica per sample) and at
most :data:`MAX_SAMPLES` samples. When full, every other sample is dropped and the interval
doubles; samples stay at whole multiples of the interval, so the series is deterministic and
spans the whole run with at least half the samples the bound allows.
"""

from __future__ import annotations

from array import array

import numpy as np

from .errors import KvsimError

NS = 1_000_000_000
MAX_TIME_NS = 1 << 62
"""Simulated time is recorded as int64 nanoseconds: about 146 years of headroom."""
FIRST_INTERVAL_NS = 10_000_000
"""The interval a run starts with (10 ms), doubled as often as the run's length needs."""
MAX_SAMPLES = 2048
MAX_VALUES = 1 << 20
"""Integers kept at most (8 MiB): with many replicas, fewer samples."""


class QueueSeries:
    """Waiting and running requests per replica at times 0, Δ, 2Δ, … (Δ = ``interval_ns``)."""

    def __init__(self, replicas: list):
        self.replicas = replicas
        self.interval_ns = FIRST_INTERVAL_NS
        """Time between samples (a power-of-two multiple of :data:`FIRST_INTERVAL_NS`)."""
        width = 2 * max(1, len(replicas))
        cap = min(MAX_SAMPLES, max(16, MAX_VALUES // width))
        self.max_samples = cap - cap % 2
        """Samples kept at most (even, so that halving keeps every other one exactly)."""
        self.values = array("q")
        """Row-major: per sample, per replica, waiting then running."""
        self.samples = 0
        self._next_ns = 0

    def run(self, env) -> None:
        """Run ``env`` to its end (as ``env.run()``), sampling on the way; a clock that would
        pass :data:`MAX_TIME_NS` (an int64 of nanoseconds in the results) is one-line error."""
        step, peek = env.step, env.peek
        while True:
            t = peek()
            if t > self._next_ns:  # NOTE: the only test on most events
                if t == float("inf"):
                    return
                if t >= MAX_TIME_NS:
                    raise KvsimError(
                        f"the simulated clock would pass {MAX_TIME_NS / NS:.3g} s (an event at "
                        f"{t / NS:.3g} s): are the latency model's prices absurdly slow?"
                    )
                while self._next_ns < t:
                    self._record()
            step()

    def _record(self) -> None:
        if self.samples == self.max_samples:
            # NOTE: max_samples is even, so the pending time max·Δ is a multiple of 2Δ.
            self._halve()
        row = self.values
        for r in self.replicas:
            row.append(len(r.scheduler.waiting))
            row.append(r.scheduler.num_running)
        self.samples += 1
        self._next_ns += self.interval_ns

    def _halve(self) -> None:
        width = 2 * len(self.replicas)
        kept = np.frombuffer(self.values, dtype=np.int64).reshape(-1, width)[::2]
        self.values = array("q", kept.tobytes())
        self.samples = len(kept)
        self.interval_ns *= 2

    def columns(self) -> dict[str, np.ndarray]:
        """``time_s`` and, summed over replicas, ``waiting`` and ``running``."""
        v = np.frombuffer(self.values, dtype=np.int64).reshape(self.samples, -1, 2)
        return {
            "time_s": np.arange(self.samples) * (self.interval_ns / NS),
            "waiting": v[:, :, 0].sum(axis=1),
            "running": v[:, :, 1].sum(axis=1),
        }

    def csv(self) -> str:
        """One row per sample and replica: ``time_s,replica,waiting,running``."""
        lines = ["time_s,replica,waiting,running\n"]
        n = len(self.replicas)
        v = self.values
        for k in range(self.samples):
            t = f"{k * self.interval_ns / NS:.9f}"
            base = 2 * n * k
            for i in range(n):
                lines.append(f"{t},{i},{v[base + 2 * i]},{v[base + 2 * i + 1]}\n")
        return "".join(lines)
