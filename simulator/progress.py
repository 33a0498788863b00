"""A small progress bar on stderr, drawn at most five times a second (no dependency)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """``update(done)`` as requests finish; ``close()`` at the end. Silent when disabled."""

    def __init__(self, total: int | None, label: str = "requests", enabled: bool = True):
        self.total = total
        self.label = label
        self.enabled = enabled
        self.start = time.monotonic()
        self._last = 0.0
        self._done = 0

    def update(self, done: int) -> None:
        self._done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and done != self.total:
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self._done / self.total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            eta = (self.total - self._done) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:5.0f} s left" if eta != float("inf") else "      "
            text = f"\r[{bar}] {self._done}/{self.total} {self.label}  {rate:,.0f}/s  {eta_s}"
        else:
            text = f"\r{self._done} {self.label}  {rate:,.0f}/s"
        sys.stderr.write(text)
        sys.stderr.flush()

    def close(self) -> float:
        """Finish the line; return elapsed wall seconds."""
        now = time.monotonic()
        if self.enabled:
            self._draw(now)
            sys.stderr.write("\n")
            sys.stderr.flush()
        return now - self.start
