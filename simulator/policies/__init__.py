"""Pluggable policies, one module per family, each with a name registry."""

from . import asymcache, continuum, eviction_peers  # noqa: F401 (they register eviction policies)
from .checkpoint import CHECKPOINT
from .eviction import EVICTION
from .registry import Registry
from .routing import ROUTING
from .transfer import TRANSFER

__all__ = ["CHECKPOINT", "EVICTION", "ROUTING", "TRANSFER", "Registry"]
