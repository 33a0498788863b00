"""Queues and KV use over simulated time: waiting and running requests and the KV blocks held by
sequences, per replica (DESIGN §4, "sampled time series"), written as ``timeseries.csv`` and drawn
in the report.

The sampler steps the SimPy environment itself, one event at a time, and before an event at time
t records every sample time s < t. No event happens strictly between, so a sample at s is the
state after every event at a time ≤ s. Sampling adds no event: the run's results and its end
time are exactly what ``env.run()`` gives. A fast-forwarded decode run changes neither queue
before its boundary, and its KV blocks are counted for the iterations started by the sample's
time (``Replica.kv_used_blocks``, read-only), so fast-forward and exact stepping give the same
series.

NOTE (memory): at most :data:`MAX_VALUES` integers are kept (three per replica per sample) and at
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


WIDTH = 3
"""Values per replica per sample: waiting, running, KV blocks held."""


class QueueSeries:
    """Waiting and running requests and KV blocks held, per replica, at times 0, Δ, 2Δ, …
    (Δ = ``interval_ns``)."""

    def __init__(self, replicas: list):
        self.replicas = replicas
        self.interval_ns = FIRST_INTERVAL_NS
        """Time between samples (a power-of-two multiple of :data:`FIRST_INTERVAL_NS`)."""
        width = WIDTH * max(1, len(replicas))
        cap = min(MAX_SAMPLES, max(16, MAX_VALUES // width))
        self.max_samples = cap - cap % 2
        """Samples kept at most (even, so that halving keeps every other one exactly)."""
        self.values = array("q")
        """Row-major: per sample, per replica, waiting, running, KV blocks held."""
        self.capacity = [r.scheduler.cache.capacity for r in replicas]
        """Each replica's KV blocks."""
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
                    self._record(self._next_ns)
                env.horizon = min(self._next_ns, MAX_TIME_NS - 1)
            step()

    def _record(self, at_ns: int) -> None:
        if self.samples == self.max_samples:
            # NOTE: max_samples is even, so the pending time max·Δ is a multiple of 2Δ.
            self._halve()
        row = self.values
        for r in self.replicas:
            row.append(len(r.scheduler.waiting))
            row.append(r.scheduler.num_running)
            row.append(r.kv_used_blocks(at_ns))
        self.samples += 1
        self._next_ns += self.interval_ns

    def _halve(self) -> None:
        width = WIDTH * len(self.replicas)
        kept = np.frombuffer(self.values, dtype=np.int64).reshape(-1, width)[::2]
        self.values = array("q", kept.tobytes())
        self.samples = len(kept)
        self.interval_ns *= 2

    def per_replica(self) -> np.ndarray:
        """The samples as an int64 array of shape (samples, replicas, 3): waiting, running, KV
        blocks held."""
        v = np.frombuffer(self.values, dtype=np.int64)
        return v.reshape(self.samples, len(self.replicas), WIDTH)

    def columns(self) -> dict[str, np.ndarray]:
        """``time_s`` and, summed over replicas, ``waiting``, ``running`` and ``kv_blocks_used``
        (with ``kv_use``, their share of all replicas' blocks)."""
        v = self.per_replica()
        kv = v[:, :, 2].sum(axis=1)
        return {
            "time_s": np.arange(self.samples) * (self.interval_ns / NS),
            "waiting": v[:, :, 0].sum(axis=1),
            "running": v[:, :, 1].sum(axis=1),
            "kv_blocks_used": kv,
            "kv_use": kv / max(1, sum(self.capacity)),
        }

    def kv_use(self) -> list[tuple[float, float]]:
        """Per replica, the mean and the peak over the samples of the share of its KV blocks
        held by sequences (0 without samples)."""
        v = self.per_replica()
        if not self.samples:
            return [(0.0, 0.0)] * len(self.replicas)
        return [
            (float(v[:, i, 2].mean()) / cap, float(v[:, i, 2].max()) / cap)
            for i, cap in enumerate(self.capacity)
        ]

    def csv(self) -> str:
        """One row per sample and replica: ``time_s,replica,waiting,running,kv_blocks_used``."""
        lines = ["time_s,replica,waiting,running,kv_blocks_used\n"]
        n = len(self.replicas)
        v = self.values
        for k in range(self.samples):
            t = f"{k * self.interval_ns / NS:.9f}"
            base = WIDTH * n * k
            for i in range(n):
                j = base + WIDTH * i
                lines.append(f"{t},{i},{v[j]},{v[j + 1]},{v[j + 2]}\n")
        return "".join(lines)
