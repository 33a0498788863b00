"""Timing semantics: event logs of tiny workloads, priced by hand with the roofline formulas.

The expected iteration times below are computed from the catalog's figures and the roofline's
documented formulas written out here, independently of the simulator's op, pricer and roofline
code.
"""

from __future__ import annotations

import pytest
import yaml
from hand_prices import iteration_ns
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate


def _run(tmp_path, rows, exact: bool, **over):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, simulation={"exact_steps": exact}, **over)
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    return {int(r["id"]): r for r in res.requests}, res


def _ns(x: str) -> int:
    return round(float(x) * 1e9)


@pytest.mark.parametrize("exact", [False, True])
def test_one_request_chunked_prefill_then_decode(tmp_path, exact):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 3}]
    reqs, _ = _run(tmp_path, rows, exact)
    # Budget 512: chunk 512, chunk 488 (samples token 1), two decodes (tokens 2 and 3).
    t1 = iteration_ns([(0, 512)], logits=0)
    t2 = t1 + iteration_ns([(512, 488)], logits=1)
    t3 = t2 + iteration_ns([(1000, 1)], logits=1)
    t4 = t3 + iteration_ns([(1001, 1)], logits=1)
    r = reqs[0]
    assert _ns(r["first_token_s"]) == t2
    assert _ns(r["finish_s"]) == t4
    assert float(r["ttft_s"]) == pytest.approx(t2 / 1e9, abs=1e-9)
    assert float(r["tpot_s"]) == pytest.approx((t4 - t2) / 2 / 1e9, abs=1e-9)
    assert r["status"] == "done"


@pytest.mark.parametrize("exact", [False, True])
def test_three_requests_batched_then_idle_then_single(tmp_path, exact):
    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 300, "output_tokens": 2},
        {"arrival_s": 0.0, "prompt_tokens": 200, "output_tokens": 3},
        {"arrival_s": 1.0, "prompt_tokens": 100, "output_tokens": 1},
    ]
    reqs, res = _run(tmp_path, rows, exact)
    log = []
    t1 = iteration_ns([(0, 300), (0, 200)], logits=2)  # both prefills fit the 512 budget
    log += [("first token r0", t1), ("first token r1", t1)]
    t2 = t1 + iteration_ns([(300, 1), (200, 1)], logits=2)
    log += [("finish r0", t2)]
    t3 = t2 + iteration_ns([(201, 1)], logits=1)
    log += [("finish r1", t3)]
    arrive = 1_000_000_000  # idle until r2 arrives
    t4 = arrive + iteration_ns([(0, 100)], logits=1)
    log += [("first token r2", t4), ("finish r2", t4)]
    got = [
        ("first token r0", _ns(reqs[0]["first_token_s"])),
        ("first token r1", _ns(reqs[1]["first_token_s"])),
        ("finish r0", _ns(reqs[0]["finish_s"])),
        ("finish r1", _ns(reqs[1]["finish_s"])),
        ("first token r2", _ns(reqs[2]["first_token_s"])),
        ("finish r2", _ns(reqs[2]["finish_s"])),
    ]
    assert sorted(got, key=lambda e: (e[1], e[0])) == sorted(log, key=lambda e: (e[1], e[0]))
    assert float(reqs[1]["tpot_s"]) == pytest.approx((t3 - t1) / 2 / 1e9, abs=1e-9)
    assert reqs[2]["tpot_s"] is None  # one output token: TPOT undefined
    assert res.summary["iterations"] == 4


def test_resolved_scenario_round_trips(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 10, "output_tokens": 2}]
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    s = scenario_from_dict(scenario_doc(trace), base_dir=tmp_path)
    again = scenario_from_dict(yaml.safe_load(s.resolved_yaml()), base_dir=tmp_path)
    assert again == s
