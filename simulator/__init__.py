"""kvsim's simulator: scenario schema, SimPy cluster model, policies, latency models, results.

from kvsim.simulator import load_scenario, simulate
results = simulate(load_scenario("scenarios/quickstart.yaml"))
results.summary["ttft_s"]["p99"], results.requests[0]
"""

from .cluster import simulate
from .errors import KvsimError
from .scenario import Scenario, load_scenario, scenario_from_dict

__all__ = ["KvsimError", "Scenario", "load_scenario", "scenario_from_dict", "simulate"]
