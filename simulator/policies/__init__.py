"""Pluggable policies, one module per family, each with a name registry."""

from .eviction import EVICTION
from .registry import Registry
from .routing import ROUTING

__all__ = ["EVICTION", "ROUTING", "Registry"]
