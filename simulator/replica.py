"""A serving replica's engine loop on the SimPy clock (the only SimPy code besides arrivals).

One pending timeout per replica: the end of the iteration, or of a fast-forwarded run of
pure-decode iterations, in flight. At that boundary the effects are applied and the next batch is
formed. Simulated time is integer nanoseconds. A boundary that would be the next event anyway
(nothing queued at or before it, no sample due before it: ``clock.Clock.advance``) is applied in
place, without a timeout: same order of effects, fewer SimPy events.

Decode fast-forward (DESIGN §4): when a batch holds only decodes and no waiting request can be
admitted, the batch cannot change before the next completion, except by a new arrival, as long as
no block shortage forces a preemption and, while requests wait or under a time-dependent eviction
policy, no eviction happens (the run is cut before either), and the batch did not just preempt
(admission reopens after).
The next iterations are priced one by one (same integers as exact stepping) and one timeout
covers them all.
NOTE: cancellation is lazy: a request that reaches this replica mid-run bumps ``_version`` and
schedules a new boundary at the first iteration end at or after its arrival; the old timeout
fires later and is ignored. Arrivals are URGENT events, so at equal times they precede boundaries
in both modes, and block allocations of a run are applied for exactly the iterations that started
before ``now`` whenever someone looks (``sync``). Hence fast-forward and ``exact_steps`` agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .latency.pricer import IterationPricer, IterationRun
from .scheduler import Batch, Scheduler, Seq
from .usage import UsageMeter

ON_BOUNDARY: Callable[[Replica], None] | None = None
"""Called with the replica after each boundary, once its next batch is formed (the invariant
tests check the scheduler there). A module global, not a method to patch: the compiled engine
core calls its own methods directly."""


class Replica:
    """A unified (prefill + decode) replica: scheduler, KV cache, pricer, engine loop."""

    def __init__(
        self, env, index: int, scheduler: Scheduler, pricer: IterationPricer, exact_steps: bool
    ):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        scheduler.on_ready = lambda: self._kick(env.now)
        if scheduler.cache.cpu is not None:
            # NOTE: units arriving in the CPU tier change what a waiting prompt would hit (and
            # so whether it fits): like an arrival, they end a fast-forwarded run.
            scheduler.cache.cpu.on_arrival = self._on_cpu_arrival
        self.pricer = pricer
        self.exact_steps = exact_steps
        self.before_schedule: Callable[[], None] | None = None
        """Called at every boundary before the next batch is formed (a decode replica retries
        the reservations of transfers waiting for its blocks)."""
        self.routed = 0
        self.handoffs_waiting = 0
        """Hand-offs waiting for this decode replica to reserve their blocks."""
        self.iterations = 0
        self.busy_ns = 0
        self.last_boundary_ns = 0
        """When its last iteration (or run) ended: a superseded timeout that fires later is no
        event of the simulation (it moves SimPy's clock, not the run's end)."""
        self.usage = UsageMeter(scheduler.max_tokens, scheduler.max_seqs)
        """Batch fill, saturated time and iterations at the token budget (``usage``)."""
        self._version = 0
        self._busy = False
        # The run in flight: batch, first iteration index, its iterations (None when idle).
        self._batch: Batch | None = None
        self._it0 = 0
        self._run: IterationRun | None = None

    # ---- what routers see ----------------------------------------------------------------------
    @property
    def queued_tokens(self) -> int:
        return self.scheduler.queued_tokens

    @property
    def in_flight(self) -> int:
        s = self.scheduler
        return len(s.waiting) + len(s.prefilling) + len(s.decoding)

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def cached_prefix_tokens(self, request) -> int:
        return self.scheduler.cache.cached_tokens(request)

    def kv_used_blocks(self, at_ns: int) -> int:
        """KV blocks held by sequences after every event at or before ``at_ns`` (vLLM's KV cache
        usage: cached blocks no sequence holds are free to take). Read-only: the decode blocks of
        a fast-forwarded run's iterations started by then count as exact stepping would have
        allocated them."""
        s = self.scheduler
        used = s.cache.capacity - s.cache.available()
        run = self._run
        if run is not None and run.k > 1:
            target = self._it0 + min(run.count_before(at_ns + 1) + 1, run.k)
            if s.alloc_it < target:
                used += s.decode_blocks_between(s.alloc_it, target)
        return used

    # ---- arrivals ------------------------------------------------------------------------------
    def submit(self, seq: Seq) -> None:
        """A request reaches this replica now."""
        now = self.env.now
        self.routed += 1
        self.scheduler.add(seq)
        # NOTE: _kick inlined (the arrivals' hot path).
        if not self._busy:
            self._busy = True
            self._schedule_boundary(now)
        elif self._run is not None and self._run.k > 1:
            j = self._run.count_before(now)
            if j < self._run.k - 1:
                self._schedule_boundary(self._run.cut(j))

    def _kick(self, now: int) -> None:
        """New work at ``now`` (an URGENT event): start if idle, else stop a run at the first
        iteration end at or after ``now``."""
        if not self._busy:
            self._busy = True
            self._schedule_boundary(now)
        elif self._run is not None and self._run.k > 1:
            # Stop the run at the first iteration end at or after now.
            j = self._run.count_before(now)
            if j < self._run.k - 1:
                self._schedule_boundary(self._run.cut(j))

    def _on_cpu_arrival(self) -> None:
        if self.scheduler.waiting:
            self._kick(self.env.now)

    def sync(self, now: int, inclusive: bool = False) -> None:
        """Apply the block allocations of run iterations that started before ``now`` (URGENT
        events see the cache before the boundaries of ``now``), or at or before it
        (``inclusive``: LATE events, which come after every boundary of ``now``)."""
        run = self._run
        if run is not None and run.k > 1:
            ended = run.count_before(now + 1 if inclusive else now)
            self.scheduler_allocate(min(ended + 1, run.k))  # iteration i starts when i - 1 ends

    def sync_for_prefix(self, request, now: int, inclusive: bool = False) -> None:
        """``sync`` before a router reads how much of ``request``'s prompt this cache holds,
        where syncing can change that. Only an eviction takes a node away: it cannot matter
        where the cache cannot hold the prompt's prefix (``KVCache.may_reuse``), nor where the
        run's pending decode blocks fit in the free blocks (they evict nothing). There the
        blocks are left pending: nothing here reads them before this replica's next sync or
        boundary allocates them, as one allocation that evicts what allocating them now would."""
        run = self._run
        if run is not None and run.k > 1 and self.scheduler.cache.may_reuse(request):
            s = self.scheduler
            if s.decode_blocks_between(s.alloc_it, self._it0 + run.k) > s.cache.free:
                self.sync(now, inclusive)

    def cut_after(self, now: int) -> None:
        """Something took blocks from this replica's pool at ``now``, after its boundaries of
        ``now`` (a LATE event): stop the run at the first iteration end after ``now``."""
        run = self._run
        if run is not None and run.k > 1:
            j = run.count_before(now + 1)
            if j < run.k - 1:
                self._schedule_boundary(run.cut(j))

    def wake(self) -> None:
        """Work appeared without an arrival (blocks freed by a completed transfer): an idle
        replica starts now; a busy one sees it at its next boundary."""
        s = self.scheduler
        if not self._busy and (s.waiting or s.ready):
            self._busy = True
            self._schedule_boundary(self.env.now)

    def receive(self, seq: Seq, ready: bool) -> None:
        """A handed-over sequence arrives (as an arrival does): ``ready`` with its KV (and
        blocks), else as a prompt to prefill here (its routing was counted when it was sent)."""
        if ready:
            self.scheduler.arrived(seq)
        else:
            self.scheduler.add(seq)
        self._kick(self.env.now)

    def scheduler_allocate(self, iterations: int) -> None:
        """Allocate the decode blocks of the run's first ``iterations`` iterations.

        NOTE: one allocation of the summed need evicts exactly the victims that one allocation per
        iteration would (same policy order, nothing accessed in between)."""
        s = self.scheduler
        target = self._it0 + iterations
        if s.alloc_it < target:
            s.cache.allocate(s.decode_blocks_between(s.alloc_it, target), self.env.now)
            s.alloc_it = target

    # ---- the engine loop -----------------------------------------------------------------------
    def _schedule_boundary(self, at_ns: int) -> None:
        self._version = version = self._version + 1
        env = self.env
        env.timeout(at_ns - env.now).callbacks.append(lambda _ev: self._on_boundary(version))

    def _on_boundary(self, version: int) -> None:
        if version != self._version:
            return  # superseded by a truncated run
        env = self.env
        now = env.now
        while True:
            end = self._boundary(now)
            if end < 0:
                return
            # NOTE: nothing else can happen before the run's end: apply it in place, no event.
            if not env.advance(end):
                self._schedule_boundary(end)
                return
            now = end

    def _boundary(self, now: int) -> int:
        """Apply the run that ends at ``now`` (if any) and start the next one: its end, or -1
        when the replica goes idle."""
        self.last_boundary_ns = now
        batch = self._batch
        if batch is not None:
            run = self._run
            assert run is not None  # a batch in flight has its run
            k = run.k
            s = self.scheduler
            # NOTE (hot path): scheduler_allocate(k), inlined.
            target = self._it0 + k
            if s.alloc_it < target:
                s.cache.allocate(s.decode_blocks_between(s.alloc_it, target), now)
                s.alloc_it = target
            s.complete(batch, k, now)
            self.iterations += k
            duration_ns = now - run.start
            self.busy_ns += duration_ns
            self.usage.end(k, duration_ns)
        if self.before_schedule is not None:
            self.before_schedule()
        end = self._start(now)
        if ON_BOUNDARY is not None:
            ON_BOUNDARY(self)
        return end

    def _start(self, now: int) -> int:
        """Form the next batch at ``now`` and price it: its run's end, or -1 (idle)."""
        s = self.scheduler
        s.now_ns = now
        batch = s.schedule()
        if batch is None:
            self._busy = False
            self._batch = None
            self._run = None
            return -1
        self._batch = batch
        self._it0 = s.it
        self.usage.start(batch.tokens, batch.decodes + len(batch.prefills), bool(s.waiting))
        if batch.prefills or batch.extra_ops:
            ns = self.pricer.iteration_ns(
                batch.tokens,
                batch.logits,
                batch.seqs,
                batch.kv_tokens,
                batch.qk_pairs,
                batch.segments,
                batch.extra_ops,
                batch.decodes,
            )
            run = IterationRun.single(now, now + ns)
        else:
            run = self._plan_decode_run(batch, now)
        self._run = run
        return run.end

    def _plan_decode_run(self, batch: Batch, now: int) -> IterationRun:
        """Price the pure-decode iterations until the next completion or block shortage."""
        s = self.scheduler
        n = batch.decodes
        it0 = s.it
        if self.exact_steps or batch.preempted:
            # After a preemption admission reopens at the next boundary: no fast-forward.
            k = 1
        else:
            # Iteration it0's blocks are allocated; later ones must fit without preemption. While
            # requests wait, the run may not evict: an eviction can free more than it needs and
            # make the head of the queue admissible, which would change the batch. Nor may it
            # evict under a time-dependent policy: its victims must be chosen at the exact
            # boundary, which the next run's first iteration is.
            finish_it = s.next_finish_it()
            assert finish_it is not None  # the batch's decodes finish some time
            k_max = finish_it - it0 + 1
            evict = not s.waiting and not s.cache.time_dependent
            room = s.cache.available() if evict else s.cache.free
            k = 1 + s.decode_iterations_affordable(it0 + 1, k_max - 1, room)
        return self.pricer.decode_run(n, s.dec_sum + n, k, now, s.dec_segs)


def least_prefill_work(replicas: list[Replica], request: Any, now: int, inclusive: bool) -> Replica:
    """``prefix_aware``'s pick (``policies/routing.py``: the smallest (queued tokens + uncached
    prompt tokens, requests in flight), the first such replica on a tie) with ``Pool.sync_for``'s
    syncs fused into the same pass, in compiled code: the arrivals' hot path. A replica's sync
    changes no other replica's figures, so syncing each just before reading it is syncing all
    first."""
    best = replicas[0]
    best_work = best_flight = 0
    prompt: int = request.prompt_tokens
    for i, r in enumerate(replicas):
        r.sync_for_prefix(request, now, inclusive)
        cache = r.scheduler.cache
        work = r.scheduler.queued_tokens + prompt - cache.cached_tokens(request)
        flight = r.in_flight
        if i == 0 or work < best_work or (work == best_work and flight < best_flight):
            best, best_work, best_flight = r, work, flight
    return best


class DecodeReplica(Replica):
    """A decode pool's replica: hand-offs waiting for its blocks, on their way, or arrived count
    as its requests in flight (what routers balance)."""

    @property
    def in_flight(self) -> int:
        s = self.scheduler
        return (
            len(s.waiting) + len(s.prefilling) + len(s.decoding) + len(s.ready) + len(s.incoming)
            + self.handoffs_waiting
        )  # fmt: skip
