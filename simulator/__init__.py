"""kvsim's simulator: scenario schema, SimPy cluster model, policies, latency models, results.

from kvsim.simulator import load_scenario, simulate
results = simulate(load_scenario("scenarios/quickstart.yaml"))
results.summary["ttft_s"]["p99"], results.requests[0]
"""

import os as _os
import sys as _sys

# NOTE: `python -m kvsim.simulator.cli` puts the current folder first on sys.path, so any
# numpy.py or yaml.py lying there would be imported in place of the real one. While -m locates
# the module, sys.argv[0] is "-m" (Python docs, sys.argv): drop that entry before importing.
if _sys.argv[:1] == ["-m"] and _sys.path and _sys.path[0] in ("", _os.getcwd()):
    del _sys.path[0]

from . import _native

ENGINE = _native.choose(_native.Path(__file__).parent, __name__)
"""``"compiled"``: the engine core runs as mypyc's C extensions; ``"python"``: as source."""

# The public names are imported on first use (PEP 562), so that `kvsim --help` and the CLI's
# light commands do not pay for the SimPy model, pydantic and numpy (about 0.3 s on one core).
_LAZY = {
    "KvsimError": ".errors",
    "Scenario": ".scenario",
    "load_scenario": ".scenario",
    "scenario_from_dict": ".scenario",
    "simulate": ".cluster",
}

__all__ = ["KvsimError", "Scenario", "load_scenario", "scenario_from_dict", "simulate"]


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
