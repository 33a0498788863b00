"""In-place boundaries (``clock.Clock.advance``): a replica whose next iteration ends before
anything else can happen applies that boundary without an event. The clock moves only when no
event is queued at or before the time and no sample is due before it, and a run gives the same
bytes as one where every boundary is a SimPy event.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import load_hypothesis_profile, scenario_doc, write_kvsim_trace
from hypothesis import given
from hypothesis import strategies as st

from kvsim.simulator import replica as replica_module
from kvsim.simulator import scenario_from_dict, simulate
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


def _outputs(doc: dict, base: Path, in_place: bool, monkeypatch) -> tuple:
    """A run's summary, requests.csv, timeseries.csv and link series, boundaries in place or
    each an event."""
    if in_place:
        monkeypatch.undo()
    else:
        monkeypatch.setattr(Clock, "advance", lambda self, t: False)
    r = simulate(scenario_from_dict(doc, base_dir=base))
    monkeypatch.undo()
    summary = json.dumps(r.summary, sort_keys=True, default=str)
    return summary, r.requests_csv(), r.timeseries.csv(), json.dumps(r.link_series, default=str)


def test_an_arrival_at_a_boundary_time_comes_first_as_it_does_as_an_event(tmp_path, monkeypatch):
    """B arrives at exactly the nanosecond of a boundary of A's run that is applied in place when
    A runs alone. Its arrival is an URGENT event queued there, so that boundary must wait for it
    (an event first, then the boundary, which admits B at once) as it would as an event."""
    a = {"arrival_s": 0.0, "prompt_tokens": 300, "output_tokens": 40}
    sim = {"exact_steps": True}
    moved: list[int] = []
    advance = Clock.advance

    def recorded(self, t):
        ok = advance(self, t)
        if ok:
            moved.append(t)
        return ok

    monkeypatch.setattr(Clock, "advance", recorded)
    alone = scenario_doc(write_kvsim_trace(tmp_path / "a.jsonl", [a]), simulation=sim)
    simulate(scenario_from_dict(alone, base_dir=tmp_path))
    monkeypatch.undo()
    at_ns = moved[0]  # a decode boundary of A, applied in place
    b = {"arrival_s": at_ns / 1e9, "prompt_tokens": 200, "output_tokens": 4}
    assert round(b["arrival_s"] * 1e9) == at_ns
    doc = scenario_doc(write_kvsim_trace(tmp_path / "ab.jsonl", [a, b]), simulation=sim)
    in_place = _outputs(doc, tmp_path, True, monkeypatch)
    as_events = _outputs(doc, tmp_path, False, monkeypatch)
    assert in_place == as_events
    row_b = in_place[1].splitlines()[1].split(",")
    assert row_b[0] == "1" and row_b[-1] == "0.000000000"  # B queued for no time


def _adversarial(rng: random.Random, tmp: Path) -> dict:
    """A small scenario where boundaries meet other events: arrivals on a coarse grid (many at
    once, some on sample times), sessions with zero think time, tight pools, prefix-aware
    routing, a time-dependent eviction policy, a CPU tier, a recurrent model, or a prefill and a
    decode pool over a slow link with latency; exact stepping or fast-forward."""
    grid = rng.choice([0.0, 0.001, 0.01])
    rows, t, next_id = [], 0.0, 1000
    for _ in range(rng.randint(2, 16)):
        t = round(t + rng.choice([0, 0, 1, 3]) * grid, 6)
        prompt = rng.randint(1, 300)
        units = -(-prompt // 64)
        shared = rng.randint(0, units)
        blocks = list(range(shared)) + list(range(next_id, next_id + units - shared))
        next_id += units
        rows.append({"arrival_s": t, "prompt_tokens": prompt, "unit_tokens": 64,
                     "output_tokens": rng.choice([1, 3, 20, 80]), "blocks": blocks})  # fmt: skip
    if rng.random() < 0.4:  # sessions: turns released by finishes, often at once
        session, turn = 0, 0
        for row in rows:
            row.update(session=session, turn=turn)
            if turn:
                row["think_s"] = rng.choice([0.0, 0.0, 0.001])
            turn += 1
            if rng.random() < 0.3:
                session, turn = session + 1, 0
    trace = write_kvsim_trace(tmp / "w.jsonl", rows)
    kind = rng.choice(["unified", "cpu", "recurrent", "disaggregated"])
    sched = {"max_num_batched_tokens": rng.choice([64, 512]), "max_num_seqs": rng.choice([2, 8])}
    sim = {"exact_steps": rng.random() < 0.3}
    cache: dict = {"num_gpu_blocks": rng.randint(30, 120),
                   "eviction": rng.choice(["lru", "helpers:OldestFootprint"])}  # fmt: skip
    if kind == "disaggregated":
        doc = scenario_doc(trace, scheduler=sched, simulation=sim, routing="prefix_aware")
        del doc["cluster"]
        doc["pools"] = [
            {"role": "prefill", "replicas": rng.randint(1, 2), "cache": {"num_gpu_blocks": 4096}},
            {"role": "decode", "replicas": rng.randint(1, 2), "cache": cache},
        ]
        doc["links"] = [{"producer": "prefill", "consumer": "decode", "latency_s": 0.001,
                         "bandwidth_gbit_per_s": rng.choice([0.05, 8.0])}]  # fmt: skip
        doc["transfer"] = {"codec": "raw", "first_token": rng.choice(["producer", "consumer"])}
        return doc
    model = "llama-3.1-8b"
    if kind == "cpu":
        cache["cpu_tier"] = {"num_blocks": 16, "pcie_gbit_per_s": rng.choice([1.0, 64.0])}
    elif kind == "recurrent":
        model = "qwen3.5-0.8b"
        cache.update(num_gpu_blocks=cache["num_gpu_blocks"] + 250, eviction="lru",
                     checkpoint={"type": "every", "k": 128})  # fmt: skip
    return scenario_doc(
        trace, model=model, cache=cache, cluster={"replicas": rng.randint(1, 3)},
        routing=rng.choice(["least_loaded", "prefix_aware"]), scheduler=sched, simulation=sim,
    )  # fmt: skip


load_hypothesis_profile()


@given(seed=st.integers(0, 2**32 - 1))
def test_in_place_boundaries_give_the_outputs_of_events_on_adversarial_runs(
    tmp_path, monkeypatch, seed
):
    doc = _adversarial(random.Random(seed), tmp_path)
    assert _outputs(doc, tmp_path, True, monkeypatch) == _outputs(doc, tmp_path, False, monkeypatch)
