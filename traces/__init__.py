"""Request traces: streaming readers for public formats and synthetic workload generators."""

from .readers import FORMATS, read_trace
from .request import Request, TraceError

# The generators and statistics need numpy: imported on first use (PEP 562), so that reading a
# trace's format list (the CLI's help) stays light.
_LAZY = {"synthetic_requests": ".generators", "TraceStats": ".stats", "trace_stats": ".stats"}

__all__ = [
    "FORMATS",
    "Request",
    "TraceError",
    "TraceStats",
    "read_trace",
    "synthetic_requests",
    "trace_stats",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
