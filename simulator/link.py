"""Links: a network or PCIe connection whose bandwidth concurrent transfers share fairly.

DESIGN §4 and §9 (S4): a link has a bandwidth in Gbit/s (per direction), a latency and an optional
fixed overhead per transfer; concurrent transfers share the bandwidth equally (processor sharing,
the fluid model of a fair-queued link: Kleinrock, "Queueing Systems" vol. 2, §4.4). A transfer of
S bytes that starts at t:
    waits ``overhead`` (setup, no bandwidth used), then shares the bandwidth with the other active
    transfers until its 8·S bits are through, and arrives ``latency`` later.

NOTE (exactness): 1 Gbit/s is 1 bit per ns, so with integer nanoseconds the link keeps *virtual
time* V — the bits delivered to each active transfer so far — exactly: V grows by B / n per ns
while n transfers are active. A transfer that joins at virtual time V0 with b bits is through at
V0 + b, so the next completion is the smallest such target, and it happens at the real time
t + (target − V)·n / B. V and the targets are integers in units of 1 / (q·L) bit, B = p / q
exactly (from its decimal) and L a multiple of every n seen so far (when a new n does not divide
it, L and everything counted in it are scaled up), so that B / n per ns is a whole number of
units (the count goes up one join at a time, so every count below the largest divides L); no
fraction is ever rounded. Simulated time is integer, so the link's state changes only at whole
nanoseconds: an event is set at the ceiling of that time, and everything due then (completions
first, in (target, key) order, then joins) is handled by it. There is ONE pending event per link,
re-planned whenever a transfer joins or completes (DESIGN §9, S4); like arrivals, it is URGENT, so
at equal times it precedes every engine boundary — a transferred sequence that arrives at t joins
the first batch formed at a boundary ≥ t, in both simulation modes. Cancellation is lazy (a
version counter).

Bytes, transfers and busy time (some transfer active) are recorded; ``series`` keeps the busy
time in time bins of bounded number (the bin width doubles when the run outgrows them), for the
link-utilisation plot of the run report.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from fractions import Fraction

import simpy
from simpy.events import URGENT

LATE = 2
"""Event priority after every engine boundary of the same nanosecond (SimPy: URGENT 0, NORMAL 1)."""


def schedule_at(env: simpy.Environment, t_ns: int, callback: Callable, priority: int = URGENT):
    """Run ``callback(event)`` at ``t_ns`` with ``priority`` (URGENT: before any ordinary event of
    that time; LATE: after all of them)."""
    ev = simpy.Event(env)
    # NOTE: a pre-triggered event scheduled at a chosen priority: what Timeout does at NORMAL.
    # SimPy has no public constructor for a delayed event of another priority.
    ev._ok = True
    ev._value = None
    ev.callbacks.append(callback)
    env.schedule(ev, priority, t_ns - env.now)
    return ev


class BusySeries:
    """Busy nanoseconds per time bin, with at most ``bins`` bins: when a run outgrows them the bin
    width doubles and neighbours merge, so memory is bounded whatever the run's length."""

    def __init__(self, bins: int = 1024, width_ns: int = 1_000_000):
        self.width_ns = width_ns
        """Width of one bin."""
        self.busy = [0] * bins
        """Busy nanoseconds in each bin."""

    def add(self, t0: int, t1: int) -> None:
        """Count [t0, t1) as busy."""
        while t1 > self.width_ns * len(self.busy):
            b = self.busy
            self.busy = [b[i] + b[i + 1] for i in range(0, len(b), 2)] + [0] * (len(b) // 2)
            self.width_ns *= 2
        w = self.width_ns
        while t0 < t1:
            i = t0 // w
            end = min(t1, (i + 1) * w)
            self.busy[i] += end - t0
            t0 = end

    def fractions(self, until_ns: int, width_ns: int | None = None) -> tuple[list, list]:
        """(bin start times in seconds, busy fraction of each bin) up to ``until_ns``, in bins of
        ``width_ns`` (a multiple of this series' width by a power of two; default its own), so
        that series of several links line up."""
        w = width_ns or self.width_ns
        per = w // self.width_ns
        n = -(-max(until_ns, 1) // w)
        busy = self.busy
        out = [sum(busy[i * per : (i + 1) * per]) / w for i in range(n)]
        return [i * w / 1e9 for i in range(n)], out


class _Flow:
    __slots__ = ("key", "seq", "nbytes", "target", "start_ns", "on_done")

    def __init__(self, key, seq, nbytes, start_ns, on_done):
        self.key = key
        """Tie-break among transfers due at once (a request id): deterministic delivery order."""
        self.seq = seq
        """The link's transfer counter at its start (last tie-break)."""
        self.nbytes = nbytes
        self.target = 0
        """Virtual time at which its bits are through."""
        self.start_ns = start_ns
        """When it was sent."""
        self.on_done = on_done
        """Called with the arrival time (ns) when it has arrived."""


class Link:
    """A link with processor-sharing bandwidth, latency and per-transfer overhead."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        bandwidth_gbit_per_s: float,
        latency_s: float = 0.0,
        overhead_s: float = 0.0,
    ):
        self.env = env
        self.name = name
        self.bandwidth_gbit_per_s = bandwidth_gbit_per_s
        rate = Fraction(repr(float(bandwidth_gbit_per_s)))
        self._p, self._q = rate.numerator, rate.denominator
        """Bits per nanosecond (= Gbit/s) = p / q, exactly."""
        self._l = 1
        """Units of virtual time per 1 / q bit: a multiple of every transfer count seen."""
        self.latency_ns = round(latency_s * 1e9)
        self.overhead_ns = round(overhead_s * 1e9)
        self.transfers = 0
        """Transfers that arrived."""
        self.bytes = 0
        """Bytes of the transfers that arrived."""
        self.busy_ns = 0
        """Time during which at least one transfer used the bandwidth."""
        self.series = BusySeries()
        self._v = 0
        self._t = 0
        self._active: list[tuple] = []  # (target, key, seq, flow)
        self._joins: list[tuple] = []  # (join ns, key, seq, flow)
        self._seq = 0
        self._version = 0
        self._pending_t: int | None = None

    @property
    def active(self) -> int:
        """Transfers sharing the bandwidth now."""
        return len(self._active)

    def send(self, nbytes: int, key: int, on_done: Callable[[int], None]) -> None:
        """Start a transfer of ``nbytes`` bytes now; ``on_done(arrival_ns)`` when it arrives."""
        now = self.env.now
        self._seq += 1
        flow = _Flow(key, self._seq, nbytes, now, on_done)
        self._advance(now)
        heapq.heappush(self._joins, (now + self.overhead_ns, key, self._seq, flow))
        if self.overhead_ns == 0:
            self._settle(now)
        else:
            self._replan()

    def _advance(self, now: int) -> None:
        """Move virtual time to ``now`` (n active transfers each got B / n bits per ns)."""
        dt = now - self._t
        if dt > 0 and self._active:
            self._v += dt * (self._p * self._l // len(self._active))
            self.busy_ns += dt
            self.series.add(self._t, now)
        self._t = now

    def _fit(self, n: int) -> None:
        """Make B / n a whole number of units per ns: scale the unit down by the factor L
        lacks (every virtual time is multiplied by it; their order does not change)."""
        k = n // math.gcd(self._l, n)
        if k > 1:
            self._l *= k
            self._v *= k
            self._active = [(t * k, key, seq, f) for t, key, seq, f in self._active]
            for entry in self._active:
                entry[3].target = entry[0]

    def _settle(self, now: int) -> None:
        """Handle everything due at ``now``: completions, then joins (whose zero-byte transfers
        complete at once), then re-plan the one pending event and deliver."""
        done = []
        active, joins = self._active, self._joins
        while True:
            while active and active[0][0] <= self._v:
                done.append(heapq.heappop(active)[3])
            if not (joins and joins[0][0] <= now):
                break
            while joins and joins[0][0] <= now:
                flow = heapq.heappop(joins)[3]
                self._fit(len(active) + 1)
                active = self._active
                flow.target = self._v + 8 * flow.nbytes * self._q * self._l
                heapq.heappush(active, (flow.target, flow.key, flow.seq, flow))
        self._replan()
        for flow in done:
            self.transfers += 1
            self.bytes += flow.nbytes
            if self.latency_ns:
                schedule_at(self.env, now + self.latency_ns, _deliver(flow))
            else:
                flow.on_done(now)

    def _replan(self) -> None:
        """Set the one pending event at the next completion or join, whichever is first."""
        t_next = None
        if self._active:
            left = (self._active[0][0] - self._v) * len(self._active)  # units x flows
            per_ns = self._p * self._l  # units all flows get per ns
            t_next = self._t + -(-left // per_ns)
        if self._joins and (t_next is None or self._joins[0][0] < t_next):
            t_next = self._joins[0][0]
        if t_next == self._pending_t:
            return  # NOTE: the pending event already falls then (no new event, no cancel)
        self._version += 1
        self._pending_t = t_next
        if t_next is not None:
            version = self._version
            schedule_at(self.env, t_next, lambda _ev: self._on_event(version))

    def _on_event(self, version: int) -> None:
        if version != self._version:
            return  # re-planned since
        self._pending_t = None
        now = self.env.now
        self._advance(now)
        self._settle(now)

    def summary(self, span_ns: int) -> dict:
        """Totals for summary.json: transfers, bytes, busy seconds, busy fraction of ``span_ns``."""
        return {
            "bandwidth_gbit_per_s": self.bandwidth_gbit_per_s,
            "transfers": self.transfers,
            "bytes": self.bytes,
            "busy_s": self.busy_ns / 1e9,
            "utilisation": self.busy_ns / span_ns if span_ns > 0 else 0.0,
        }


def _deliver(flow: _Flow):
    return lambda ev: flow.on_done(ev.env.now)
