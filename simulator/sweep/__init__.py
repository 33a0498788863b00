"""Sweeps: a base scenario run over a grid of ``--set`` overrides (DESIGN §8, ``kvsim sweep``).

from pathlib import Path
from kvsim.simulator.sweep import load_sweep, run_sweep
run = run_sweep(load_sweep("scenarios/sweeps/quickstart_replicas.yaml"), Path("runs/qs"))
run.table.columns, run.table.rows
"""

from .execute import EXECUTORS, SweepRun, run_sweep
from .report import pareto_front, staircase
from .spec import Plot, Point, Sweep, load_sweep

__all__ = [
    "EXECUTORS",
    "Plot",
    "Point",
    "Sweep",
    "SweepRun",
    "load_sweep",
    "pareto_front",
    "run_sweep",
    "staircase",
]
