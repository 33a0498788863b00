"""Sweeps: a base scenario run over a grid of ``--set`` overrides (DESIGN §8, ``kvsim sweep``).

from kvsim.simulator.sweep import load_sweep
[p.overrides for p in load_sweep("sweep.yaml").points]
"""

from .report import pareto_front, staircase
from .spec import Plot, Point, Sweep, load_sweep

__all__ = [
    "Plot",
    "Point",
    "Sweep",
    "load_sweep",
    "pareto_front",
    "staircase",
]
