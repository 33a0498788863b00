"""In-place boundaries (``clock.Clock.advance``): a replica whose next iteration ends before
anything else can happen applies that boundary without an event. The clock moves only when no
event is queued at or before the time and no sample is due before it, and a run gives the same
bytes as one where every boundary is a SimPy event.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsim.simulator import replica as replica_module
from kvsim.simulator.cli import main
from kvsim.simulator.clock import Clock
from kvsim.simulator.timeseries import MAX_TIME_NS, QueueSeries

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("summary.json", "requests.csv", "timeseries.csv")


def test_advance_moves_when_the_queue_is_empty_up_to_the_horizon():
    env = Clock()
    assert not env.advance(0)  # no sampled run has set a horizon yet
    env.horizon = 100
    assert env.advance(40) and env.now == 40
    assert env.advance(100) and env.now == 100  # a sample at the horizon sees this state
    assert not env.advance(101)
    assert env.now == 100


def test_advance_never_passes_or_meets_a_queued_event():
    env = Clock()
    env.horizon = 1_000
    fired = []
    env.timeout(50).callbacks.append(lambda _ev: fired.append(env.now))
    # An event queued at the same time was scheduled first: it is popped first.
    assert not env.advance(50)
    assert not env.advance(60)
    assert env.now == 0
    assert env.advance(49) and env.now == 49
    env.run()
    assert fired == [50]


class _Idle:
    """A replica stand-in with what the sampler reads."""

    class scheduler:  # noqa: N801
        waiting = ()
        num_running = 0

        class cache:  # noqa: N801
            capacity = 1

    @staticmethod
    def kv_used_blocks(at_ns: int) -> int:
        return 0


def test_the_sampled_run_keeps_the_horizon_short_of_the_clock_limit():
    # An event just before the limit: the next sample time lies past it, the horizon does not
    # (a boundary at the limit must be an event, which the run loop turns into its error).
    env = Clock()
    seen = []
    env.timeout(MAX_TIME_NS - 1).callbacks.append(
        lambda _ev: seen.append((env.horizon, env.advance(MAX_TIME_NS)))
    )
    QueueSeries([_Idle()]).run(env)
    assert seen == [(MAX_TIME_NS - 1, False)]


def _run(args: list[str], out: Path) -> dict[str, bytes]:
    assert main(["run", *args, "--out", str(out), "--no-progress"]) == 0
    return {f: (out / f).read_bytes() for f in OUTPUTS}


SCENARIOS = {
    "quickstart": ["quickstart.yaml", "--set", "workload.requests=300"],
    "mooncake": ["mooncake_conversation.yaml"],
    "asymcache": ["asymcache_longbench.yaml"],
    "scd (disaggregated)": ["scd_bandwidth.yaml"],
    "spc (recurrent)": ["spc_system_prompts.yaml"],
    "agent sessions": ["agent_continuum.yaml"],
}


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_in_place_boundaries_give_the_bytes_of_one_event_each(tmp_path, monkeypatch, case):
    name, *rest = SCENARIOS[case]
    args = [str(ROOT / "scenarios" / name), *rest]
    moved = []
    advance = Clock.advance

    def counted(self, t):
        ok = advance(self, t)
        moved.append(ok)
        return ok

    monkeypatch.setattr(Clock, "advance", counted)
    in_place = _run(args, tmp_path / "in_place")
    assert sum(moved) > 0, "no boundary was applied in place"
    monkeypatch.setattr(Clock, "advance", lambda self, t: False)
    as_events = _run(args, tmp_path / "events")
    for f in OUTPUTS:
        assert in_place[f] == as_events[f], f


def test_the_boundary_hook_sees_every_boundary_in_place_or_not(tmp_path, monkeypatch):
    """``replica.ON_BOUNDARY`` (what the invariant tests check the scheduler through) is called
    at a boundary applied in place as at one that is an event: as often either way."""
    args = [str(ROOT / "scenarios" / "quickstart.yaml"), "--set", "workload.requests=200"]
    calls = []
    monkeypatch.setattr(replica_module, "ON_BOUNDARY", lambda r: calls.append(r.env.now))
    _run(args, tmp_path / "in_place")
    in_place = list(calls)
    calls.clear()
    monkeypatch.setattr(Clock, "advance", lambda self, t: False)
    _run(args, tmp_path / "events")
    assert len(in_place) > 100 and in_place == calls
