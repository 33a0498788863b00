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

from .cluster import simulate  # noqa: E402
from .errors import KvsimError  # noqa: E402
from .scenario import Scenario, load_scenario, scenario_from_dict  # noqa: E402

__all__ = ["KvsimError", "Scenario", "load_scenario", "scenario_from_dict", "simulate"]
