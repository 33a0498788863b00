"""Latency models: turn ops into seconds. ``roofline`` is the embedded default."""

from typing import Protocol

from .ops import OP_KINDS, Op
from .pricer import IterationPricer
from .roofline import RooflineModel


class LatencyModel(Protocol):
    """Anything that prices an op in seconds on one GPU."""

    name: str

    def price(self, op: Op) -> float: ...


__all__ = ["OP_KINDS", "IterationPricer", "LatencyModel", "Op", "RooflineModel"]
