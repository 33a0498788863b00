"""Latency models: turn ops into seconds. ``roofline`` is the embedded default."""

from typing import Protocol

from .ops import OP_KINDS, Op
from .pricer import IterationPricer
from .roofline import RooflineModel


class LatencyModel(Protocol):
    """Anything that prices an op in seconds on one GPU.

    Optional: ``decode_attention_terms(op) -> (cf, mb, mc, const) | None`` states pure-decode
    attention as max(cf·x, mb·x + mc) + const of the summed context x, which lets decode runs be
    priced in closed form (see ``pricer``); without it each decode iteration is priced alone.
    """

    name: str

    def price(self, op: Op) -> float: ...


__all__ = ["OP_KINDS", "IterationPricer", "LatencyModel", "Op", "RooflineModel"]
