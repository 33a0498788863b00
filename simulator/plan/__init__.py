"""Capacity planning: ``kvsim plan`` searches over simulations for the fewest replicas that meet
an SLO at a rate, or the highest rate a cluster serves within it (DESIGN §8).

from pathlib import Path
from kvsim.simulator.plan import Question, parse_slo, run_plan
plan = run_plan(Question(Path("scenarios/quickstart.yaml"), parse_slo("ttft_p99=2s"), 30.0, None))
plan.outcome.answer, [(p.value, p.meets) for p in plan.points]
"""

from .planner import Plan, PlanPoint, Question, run_plan
from .search import Outcome, fewest, highest
from .slo import Term, parse_slo, verdict

__all__ = [
    "Outcome",
    "Plan",
    "PlanPoint",
    "Question",
    "Term",
    "fewest",
    "highest",
    "parse_slo",
    "run_plan",
    "verdict",
]
