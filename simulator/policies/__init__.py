"""Pluggable policies, one module per family, each with a name registry."""

from . import continuum  # noqa: F401  (registers its eviction policy)
from .checkpoint import CHECKPOINT
from .eviction import EVICTION
from .registry import Registry
from .routing import ROUTING
from .transfer import TRANSFER

__all__ = ["CHECKPOINT", "EVICTION", "ROUTING", "TRANSFER", "Registry"]
