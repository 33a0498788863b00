"""Writing a run's results: all files appear together or not at all.

Files are written into a temporary folder beside the destination and moved into place only when
every one is complete, so an error or an interrupt never leaves a half-written result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .metrics import Results
from .scenario import Scenario

FILES = ("summary.json", "requests.csv", "scenario.resolved.yaml", "report.html")


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def summary_json(results: Results) -> str:
    return json.dumps(_clean(results.summary), indent=2, sort_keys=False) + "\n"


def write_results(out_dir: str | Path, scenario: Scenario, results: Results) -> Path:
    """Write summary.json, requests.csv, the resolved scenario and report.html into ``out_dir``."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "summary.json").write_text(summary_json(results), encoding="utf-8")
        with open(tmp / "requests.csv", "w", encoding="utf-8", newline="") as f:
            results.write_requests_csv(f)
        (tmp / "scenario.resolved.yaml").write_text(scenario.resolved_yaml(), encoding="utf-8")
        from .report import report_html

        (tmp / "report.html").write_text(report_html(results, scenario.name), encoding="utf-8")
        out.mkdir(exist_ok=True)
        for name in FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
