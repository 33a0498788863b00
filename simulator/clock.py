"""The simulation's clock: SimPy's environment, with one way to move time without an event.

A replica whose next iteration ends before anything else can happen (no event queued at or
before that end, and no sample due before it) applies that boundary in place instead of
scheduling a timeout and waiting for SimPy to pop it: :meth:`Clock.advance` moves the clock
exactly as popping that timeout would have. What the run does and in what order is unchanged;
only the events that would have been popped next, with nothing in between, are not created.
"""

from __future__ import annotations

import simpy


class Clock(simpy.Environment):
    """SimPy's environment (its clock and event queue) plus :meth:`advance`."""

    def __init__(self) -> None:
        super().__init__()
        self.horizon = -1
        """The latest time :meth:`advance` may move to: the sampler's next sample time, which
        must see the state after every event up to it (-1 until a sampled run sets it)."""

    def advance(self, t: int) -> bool:
        """Move the clock to ``t`` (≥ now) if an event at ``t`` scheduled now would be the next
        one popped, so popping it is the only thing that could happen first: nothing is queued at
        or before ``t``, and ``t`` is within :attr:`horizon`. Returns whether it moved."""
        queue = self._queue
        if t <= self.horizon and (not queue or t < queue[0][0]):
            self._now = t
            return True
        return False
