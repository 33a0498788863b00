"""The request source of a run, which hears about finishes (DESIGN §9, S5).

``next()`` gives the open-loop arrivals in time order: requests outside any session and the first
turns of sessions. ``on_finish(request)`` gives what a finished turn releases: the next turn of its
session, which arrives ``think_s`` after (a user's think time in a conversation, a tool call in an
agent job), or None when the session is over. Open-loop traces have no sessions and never release
anything.

A session's turns are consecutive in the stream (trace rows, generator output), so when a session
starts its remaining turns are read at once and held until released: memory grows with the
sessions open at a time, never with the trace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from kvsim.traces import Request, TraceError


class Workload:
    """Open-loop arrivals plus closed-loop session turns released by finishes."""

    def __init__(self, stream: Iterable[Request], source: str = "workload"):
        self._it = iter(stream)
        self._peeked: Request | None = None
        self.source = source
        self._pending: dict = {}
        """The held later turns of each open session, by session id."""

    def _pull(self) -> Request | None:
        if self._peeked is not None:
            r, self._peeked = self._peeked, None
            return r
        return next(self._it, None)

    def _peek(self) -> Request | None:
        if self._peeked is None:
            self._peeked = next(self._it, None)
        return self._peeked

    def next(self) -> Request | None:
        """The next open-loop arrival (its ``arrival_s`` orders it), or None at the end."""
        r = self._pull()
        if r is None or r.session is None:
            return r
        if r.turn != 0:
            raise TraceError(f"{self.source}: request {r.id}: turn {r.turn} of session "
                             f"{r.session!r} comes before the session's first turn")  # fmt: skip
        if r.session in self._pending:
            raise TraceError(
                f"{self.source}: request {r.id}: session {r.session!r} starts again while open"
            )
        later: deque[Request] = deque()
        while (n := self._peek()) is not None and n.session == r.session and n.turn > 0:
            later.append(self._pull())
        self._pending[r.session] = later
        return r

    def on_finish(self, req: Request) -> Request | None:
        """The turn that ``req``'s finish (or drop) releases, or None (the session is over)."""
        if req.session is None:
            return None
        later = self._pending.get(req.session)
        if later is None:
            return None
        if not later:
            del self._pending[req.session]
            return None
        return later.popleft()

    @property
    def open_sessions(self) -> int:
        return len(self._pending)
