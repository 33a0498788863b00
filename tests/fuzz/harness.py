"""Running one fuzz case through the command line and judging its outcome.

Every case runs ``kvsim.simulator.cli.main`` in this process (a subprocess per case would cost
half a second of start-up) inside a fresh folder, under a time budget (SIGALRM) and a memory
budget (tracemalloc's peak). The only acceptable outcomes:

- ``clean``: exit 0, and for ``run`` a results folder holding exactly the result files;
- ``error``: exit 2, stderr exactly one line ``kvsim: error: …``, stdout empty, no results
  folder and no staging folder left anywhere in the case's folder.

Anything else — an exception out of ``main``, another exit status, a second line, a leftover
folder, the budget exceeded — is ``other`` and fails the test with the case's details.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

from kvsim.simulator.cli import main
from kvsim.simulator.output import FILES

TIME_BUDGET_S = 20.0
MEMORY_BUDGET_BYTES = 512 << 20

TOTALS: Counter = Counter()
"""(target, outcome) → cases, printed at the end of the session (conftest)."""


class OverBudget(BaseException):
    """Raised by SIGALRM inside the case (a BaseException: nothing in kvsim catches it)."""


def _alarm(signum, frame):
    raise OverBudget


class Case:
    """A folder for one case; files written into it, then :meth:`run`."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="kvsim-fuzz-"))

    def __enter__(self) -> Case:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.dir / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        return path

    def run(self, argv: list[str]) -> tuple[str, str]:
        """Run ``kvsim argv`` (``--out`` is added for ``run``) in the case's folder and
        classify it: (outcome, details)."""
        out = self.dir / "out"
        if argv[0] == "run":
            argv = [*argv, "--out", str(out), "--no-progress"]
        before = set(os.listdir(self.dir))
        stdout, stderr = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        previous = signal.signal(signal.SIGALRM, _alarm)
        tracemalloc.start()
        rc: object
        try:
            os.chdir(self.dir)
            signal.setitimer(signal.ITIMER_REAL, TIME_BUDGET_S)
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = main(argv)
        except OverBudget:
            rc = f"over the time budget of {TIME_BUDGET_S} s"
        except BaseException as e:  # noqa: BLE001 - that is what the fuzzer looks for
            rc = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            os.chdir(cwd)
        err = stderr.getvalue()
        details = f"argv={argv!r} rc={rc!r} stderr={err[:500]!r}"
        if peak > MEMORY_BUDGET_BYTES:
            return "other", f"peak memory {peak / 2**20:.0f} MiB; {details}"
        left = sorted(set(os.listdir(self.dir)) - before - {"out"})
        staging = [p for p in self.dir.rglob(".kvsim-staging-*")]
        if rc == 0:
            if argv[0] == "run" and sorted(os.listdir(out)) != sorted(FILES):
                return "other", f"results folder holds {sorted(os.listdir(out))}; {details}"
            if left or staging:
                return "other", f"left behind {left + staging}; {details}"
            return "clean", details
        one_line = err.endswith("\n") and err.count("\n") == 1
        if rc == 2 and one_line and err.startswith("kvsim: error: ") and not stdout.getvalue():
            if out.exists() or left or staging:
                return "other", f"an error left {left + staging} (out: {out.exists()}); {details}"
            if "Traceback" in err:
                return "other", details
            return "error", details
        return "other", details


def check(target: str, case: Case, argv: list[str]) -> tuple[str, str]:
    """Run and record a case; fail (AssertionError with the details) unless its outcome is
    ``clean`` or ``error``. Returns (outcome, stderr)."""
    outcome, details = case.run(argv)
    TOTALS[target, outcome] += 1
    assert outcome in ("clean", "error"), details
    return outcome, details.split(" stderr=", 1)[1]
