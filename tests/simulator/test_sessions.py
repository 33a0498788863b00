"""Closed-loop sessions and agent jobs (DESIGN §9, S5): turns released by finishes, answers joining
the prefix tree, job latency, pinning through tool calls, and the generators."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.workload import Workload
from kvsim.traces import Request, TraceError
from kvsim.traces.generators import LengthDist
from kvsim.traces.sessions import Duration, agent_jobs, long_context_sessions

UNIT = 64


def _run(tmp_path, rows, **over):
    for r in rows:
        r.setdefault("unit_tokens", UNIT)
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    return simulate(scenario_from_dict(scenario_doc(trace, **over), base_dir=tmp_path))


def _by_id(res):
    return {int(r["id"]): r for r in res.requests}


def test_a_turn_arrives_think_s_after_the_previous_turn_finishes(tmp_path):
    """Turn 1 of session 7 arrives exactly 0.5 s after turn 0's finish (its own arrival_s is
    ignored), turn 2 0.25 s after turn 1's; the job latency (first arrival to last finish) is on
    the last turn only; an open-loop request beside them is no session."""
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 10, "blocks": [1, 2],
         "session": 7, "turn": 0},
        {"arrival_s": 99.0, "prompt_tokens": 200, "output_tokens": 10, "blocks": [1, 2, 3, 4],
         "session": 7, "turn": 1, "think_s": 0.5},
        {"prompt_tokens": 300, "output_tokens": 5, "blocks": [1, 2, 3, 4, 5],
         "session": 7, "turn": 2, "think_s": 0.25},
        {"arrival_s": 0.1, "prompt_tokens": 50, "output_tokens": 3, "blocks": [9]},
    ]  # fmt: skip
    res = _run(tmp_path, rows)
    r = _by_id(res)
    f0, f1 = float(r[0]["finish_s"]), float(r[1]["finish_s"])
    assert float(r[1]["arrival_s"]) == pytest.approx(f0 + 0.5, abs=1e-9)
    assert float(r[2]["arrival_s"]) == pytest.approx(f1 + 0.25, abs=1e-9)
    assert [r[i]["job_latency_s"] for i in (0, 1)] == [None, None]
    assert float(r[2]["job_latency_s"]) == pytest.approx(float(r[2]["finish_s"]), abs=1e-9)
    assert (r[3]["session"], r[3]["job_latency_s"]) == (None, None)
    assert res.summary["jobs"] == 1
    assert res.summary["job_latency_s"]["mean"] == pytest.approx(float(r[2]["finish_s"]))


def test_an_answer_joins_the_tree_as_far_as_its_kv_was_computed(tmp_path):
    """Turn 0 (2 units of prompt) answers 65 tokens: unit 2 (its first 64 answer tokens) has KV
    — only the last generated token has none — so turn 1, whose prompt holds the answer, reuses 3
    units (192 tokens). Answering exactly 64 tokens leaves the 64th without KV: unit 2 is not
    cached and turn 1 reuses the prompt's 2 units only."""
    for out, hit in ((65, 3 * UNIT), (64, 2 * UNIT)):
        rows = [
            {"arrival_s": 0.0, "prompt_tokens": 2 * UNIT, "output_tokens": out,
             "blocks": [1, 2], "output_blocks": [3], "session": 0, "turn": 0},
            {"prompt_tokens": 4 * UNIT, "output_tokens": 2, "blocks": [1, 2, 3, 4],
             "session": 0, "turn": 1, "think_s": 0.1},
        ]  # fmt: skip
        r = _by_id(_run(tmp_path, rows))
        assert int(r[1]["hit_tokens"]) == hit, out


def test_without_output_blocks_the_answer_is_recomputed(tmp_path):
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 2 * UNIT, "output_tokens": 65, "blocks": [1, 2],
         "session": 0, "turn": 0},
        {"prompt_tokens": 4 * UNIT, "output_tokens": 2, "blocks": [1, 2, 3, 4],
         "session": 0, "turn": 1, "think_s": 0.1},
    ]  # fmt: skip
    assert int(_by_id(_run(tmp_path, rows))[1]["hit_tokens"]) == 2 * UNIT


def test_a_dropped_turn_still_releases_the_next_one(tmp_path):
    """Turn 1 is longer than the model's context: dropped at its arrival, and turn 2 arrives its
    think time after that drop; the session's latency ends at turn 2's finish."""
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 4, "blocks": [1, 2],
         "session": 3, "turn": 0},
        {"prompt_tokens": 200_000, "output_tokens": 4, "session": 3, "turn": 1, "think_s": 1.0},
        {"prompt_tokens": 100, "output_tokens": 4, "blocks": [1, 5], "session": 3, "turn": 2,
         "think_s": 2.0},
    ]  # fmt: skip
    res = _run(tmp_path, rows)
    r = _by_id(res)
    assert r[1]["status"].startswith("dropped: longer than the model's context")
    dropped_at = float(r[1]["arrival_s"])
    assert dropped_at == pytest.approx(float(r[0]["finish_s"]) + 1.0, abs=1e-9)
    assert float(r[2]["arrival_s"]) == pytest.approx(dropped_at + 2.0, abs=1e-9)
    assert res.summary["jobs"] == 1 and r[2]["job_latency_s"] != ""


def _agent_rows():
    """An agent job (calls 0 and 1 over a 4-unit task, a 3 s tool call between); a filler request
    released after call 0; then, during the tool call, a stranger that needs 15 blocks more than
    are free."""
    return [
        {"arrival_s": 0.0, "prompt_tokens": 4 * UNIT, "output_tokens": 2, "blocks": [1, 2, 3, 4],
         "session": 0, "turn": 0, "job": 0},
        {"prompt_tokens": 5 * UNIT, "output_tokens": 2, "blocks": [1, 2, 3, 4, 5],
         "session": 0, "turn": 1, "job": 0, "think_s": 3.0},
        {"arrival_s": 0.5, "prompt_tokens": 4 * UNIT, "output_tokens": 2,
         "blocks": [30, 31, 32, 33]},
        {"arrival_s": 1.0, "prompt_tokens": 8 * UNIT, "output_tokens": 2,
         "blocks": [20, 21, 22, 23, 24, 25, 26, 27]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "eviction, hit",
    [("lru", 0), ({"type": "continuum", "ttl_s": 10.0}, 4 * UNIT),
     ({"type": "continuum", "ttl_s": 0.4}, 0)],
)  # fmt: skip
def test_an_agents_kv_survives_its_tool_call_only_while_pinned(tmp_path, eviction, hit):
    """A 50-block pool holds the job's task (16 blocks) and the filler's (16) when the stranger
    needs 33: LRU evicts the task (released first); continuum evicts the filler while the job's
    pin lasts (TTL 10 s > the 3 s tool call), so call 1 reuses the task; with a TTL of 0.4 s the
    pin has expired before the stranger arrives and the task goes first again."""
    cache = {"num_gpu_blocks": 50, "layout": "msa", "eviction": eviction}
    r = _by_id(_run(tmp_path, _agent_rows(), cache=cache))
    assert int(r[1]["hit_tokens"]) == hit
    assert all(r[i]["status"] == "done" for i in range(4))


def test_only_an_agent_call_whose_job_goes_on_is_pinned(tmp_path):
    """The same rows without the job field (a chat session): nothing is pinned, so continuum
    behaves as LRU and the task is evicted."""
    rows = _agent_rows()
    for row in rows[:2]:
        del row["job"]
    cache = {"num_gpu_blocks": 50, "layout": "msa",
             "eviction": {"type": "continuum", "ttl_s": 10.0}}  # fmt: skip
    assert int(_by_id(_run(tmp_path, rows, cache=cache))[1]["hit_tokens"]) == 0


# ---- the request source ------------------------------------------------------------------------
def _req(rid, session=None, turn=0, t=0.0):
    return Request(rid, t, 10, 1, (), 64, (), session, None, turn, 0.0)


def test_the_source_holds_a_sessions_later_turns_and_releases_them_in_order():
    w = Workload([_req(0, 5, 0), _req(1, 5, 1), _req(2, 5, 2), _req(3, None, 0, 1.0)])
    first = w.next()
    assert first.id == 0 and w.open_sessions == 1
    assert w.next().id == 3  # the open-loop request; turns 1 and 2 are held
    assert w.on_finish(first).id == 1
    assert w.on_finish(_req(1, 5, 1)).id == 2
    assert w.on_finish(_req(2, 5, 2)) is None and w.open_sessions == 0
    assert w.next() is None


def test_the_source_refuses_misordered_sessions():
    with pytest.raises(TraceError, match="turn 1 of session 5 comes before"):
        Workload([_req(0, 5, 1)]).next()
    w = Workload([_req(0, 5, 0), _req(1, 6, 0), _req(2, 5, 0)])
    w.next(), w.next()
    with pytest.raises(TraceError, match="session 5 starts again while open"):
        w.next()


def test_a_trace_whose_turns_are_not_consecutive_is_one_line(tmp_path):
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 10, "output_tokens": 1, "session": 1, "turn": 0},
        {"arrival_s": 0.1, "prompt_tokens": 10, "output_tokens": 1},
        {"prompt_tokens": 10, "output_tokens": 1, "session": 1, "turn": 1},
    ]  # fmt: skip
    with pytest.raises(KvsimError, match="turn 1 of session 1 must follow turn 0"):
        _run(tmp_path, rows)


# ---- generators --------------------------------------------------------------------------------
def test_long_context_sessions_share_the_system_prompt_and_grow_their_history():
    reqs = list(long_context_sessions(
        40, 0.5, LengthDist("fixed", value=1000), LengthDist("fixed", value=4),
        LengthDist("fixed", value=100), 128, system_prompt_tokens=256, dispersion=5.0, seed=1,
    ))  # fmt: skip
    assert len(reqs) == 40 and [r.id for r in reqs] == list(range(40))
    sessions = {}
    for r in reqs:
        sessions.setdefault(r.session, []).append(r)
    assert len(sessions) == 10 and all(len(v) == 4 for v in sessions.values())
    for turns in sessions.values():
        assert [t.turn for t in turns] == [0, 1, 2, 3]
        for k, t in enumerate(turns):
            assert t.blocks[:4] == (1, 2, 3, 4)  # the shared 256-token system prompt
            assert t.prompt_tokens == len(t.blocks) * 64 and t.output_tokens == 128
            assert len(t.output_blocks) == 2
            if k:  # the previous prompt, its answer, then the new question (2 units)
                prev = turns[k - 1]
                assert t.blocks == prev.blocks + prev.output_blocks + t.blocks[-2:]
                assert t.think_s > 0
            else:
                assert len(t.blocks) == 4 + 16 + 2 and t.think_s == 0.0
    starts = np.array([v[0].arrival_s for v in sessions.values()])
    assert np.all(np.diff(starts) > 0)


def test_think_times_follow_the_dispersion():
    """Mean think time = dispersion × the gap between session starts (mean turns / rate)."""
    reqs = list(long_context_sessions(
        8000, 2.0, LengthDist("fixed", value=64), LengthDist("fixed", value=4),
        LengthDist("fixed", value=64), 64, system_prompt_tokens=0, dispersion=10.0, seed=2,
    ))  # fmt: skip
    thinks = np.array([r.think_s for r in reqs if r.turn])
    assert thinks.mean() == pytest.approx(10.0 * 4 / 2.0, rel=0.03)
    assert thinks.std() / thinks.mean() == pytest.approx(0.25, rel=0.08)  # think_cv


def test_agent_calls_carry_earlier_outputs_and_tool_results():
    reqs = list(agent_jobs(
        12, 1.0, LengthDist("fixed", value=640), LengthDist("fixed", value=3),
        LengthDist("fixed", value=128), LengthDist("fixed", value=192),
        Duration("fixed", value_s=2.5), system_prompt_tokens=128, seed=0,
    ))  # fmt: skip
    assert len(reqs) == 12 and {r.job for r in reqs} == {0, 1, 2, 3}
    calls = [r for r in reqs if r.job == 1]
    assert [c.turn for c in calls] == [0, 1, 2] and [c.think_s for c in calls] == [0.0, 2.5, 2.5]
    for prev, c in zip(calls, calls[1:], strict=False):
        assert c.blocks[: len(prev.blocks)] == prev.blocks
        assert c.blocks[len(prev.blocks) : len(prev.blocks) + 2] == prev.output_blocks
        assert len(c.blocks) == len(prev.blocks) + 2 + 3  # the output, then the tool result
    assert calls[0].blocks[:2] == (1, 2) and len(calls[0].blocks) == 2 + 10
