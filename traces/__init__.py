"""Request traces: streaming readers for public formats and synthetic workload generators."""

from .generators import synthetic_requests
from .readers import FORMATS, read_trace
from .request import Request, TraceError
from .stats import TraceStats, trace_stats

__all__ = [
    "FORMATS",
    "Request",
    "TraceError",
    "TraceStats",
    "read_trace",
    "synthetic_requests",
    "trace_stats",
]
