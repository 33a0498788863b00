"""Prints the fuzz totals per target and outcome at the end of the session."""

from __future__ import annotations

from fuzz.harness import TOTALS


def pytest_terminal_summary(terminalreporter):
    if not TOTALS:
        return
    terminalreporter.section("kvsim fuzz outcomes")
    targets = sorted({t for t, _ in TOTALS})
    for t in targets:
        counts = {o: TOTALS[t, o] for o in ("clean", "error", "other")}
        terminalreporter.write_line(
            f"{t:10} clean run {counts['clean']:5}   one-line exit 2 {counts['error']:5}   "
            f"other {counts['other']:3}"
        )
    total = {o: sum(n for (_, oo), n in TOTALS.items() if oo == o) for o in ("clean", "error")}
    other = sum(n for (_, o), n in TOTALS.items() if o == "other")
    terminalreporter.write_line(
        f"{'all':10} clean run {total['clean']:5}   one-line exit 2 {total['error']:5}   "
        f"other {other:3}"
    )
