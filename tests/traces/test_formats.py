"""The trace formats users have: Vidur's processed traces, splitwise-sim's traces and ShareGPT-style
conversations — fields by hand, the format guessed, one-line errors naming file and line,
compressed files, and a conversation's later turn hitting its history in a simulation."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest
from helpers import scenario_doc

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.traces import Request, TraceError, read_trace
from kvsim.traces.readers import guess_format
from kvsim.traces.sharegpt import UNIT_TOKENS

VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,374,44\n4.314579,396,109\n"
SPLITWISE = (
    "request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size\n"
    "0,2,0,1,1,4096,32\n1,2,0,3,2,2048,8\n2,2,0,4,1,2048,16\n"
)


def _lengths(reqs):
    return [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs]


def test_vidur(tmp_path):
    p = tmp_path / "v.csv"
    p.write_text(VIDUR)
    assert guess_format(p) == "vidur"
    assert _lengths(read_trace(p, "vidur")) == [(0.0, 374, 44), (4.314579, 396, 109)]
    gz = tmp_path / "v.csv.gz"
    gz.write_bytes(gzip.compress(VIDUR.encode()))
    assert _lengths(read_trace(gz, "vidur")) == _lengths(read_trace(p, "vidur"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n3772,54,3826,69.8\n",
         ":1: no arrived_at column: a lengths-only Vidur trace has no arrival times to replay "
         "(give it times, or use a synthetic workload)"),
        (VIDUR + "5.0,-3,10\n",
         ":4: field 'num_prefill_tokens' is '-3'; expected an integer from 1 to 100,000,000"),
        (VIDUR + "1.0,10,10\n", ":4: timestamp goes backwards"),
    ],
)  # fmt: skip
def test_vidur_errors_name_file_and_line(tmp_path, text, expected):
    p = tmp_path / "v.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as e:
        list(read_trace(p, "vidur"))
    assert str(e.value).startswith(f"{p}{expected}")


def test_splitwise_batches_are_requests_arriving_together(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(SPLITWISE)
    assert guess_format(p) == "splitwise"
    reqs = list(read_trace(p, "splitwise"))
    assert _lengths(reqs) == [(0.0, 4096, 32), (2.0, 2048, 8), (2.0, 2048, 8), (3.0, 2048, 16)]
    assert [r.id for r in reqs] == [0, 1, 2, 3]
    bad = tmp_path / "b.csv"
    bad.write_text(SPLITWISE + "3,2,0,5,0,10,10\n")
    with pytest.raises(TraceError) as e:
        list(read_trace(bad, "splitwise"))
    assert (
        str(e.value) == f"{bad}:5: field 'batch_size' is '0'; expected an integer from 1 to 4,096"
    )


CONVS = [
    {"id": "a", "conversations": [
        {"from": "human", "value": "x" * 100}, {"from": "gpt", "value": "y" * 400},
        {"from": "human", "value": "z" * 40}, {"from": "gpt", "value": "w" * 80, "tokens": 7},
        {"from": "human", "value": "unanswered"},
    ]},
    {"id": "b", "messages": [
        {"role": "system", "content": "s" * 64}, {"role": "user", "content": "q", "tokens": 3},
        {"role": "user", "content": "more", "tokens": 2},
        {"role": "assistant", "content": "", "tokens": 5},
    ]},
    {"id": "no answer", "conversations": [{"from": "human", "value": "hello?"}]},
]  # fmt: skip


def test_sharegpt_by_hand(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(CONVS, indent=2))
    assert guess_format(p) == "sharegpt"
    got = list(read_trace(p, "sharegpt"))
    # a: 100 chars → 25 tokens, 400 → 100, 40 → 10, then 7 given; b: 64 → 16 + 3 + 2 asked, 5
    # answered. Unit ids: conversation · 2²⁴ + unit for whole units, −(conversation · 2²⁴ +
    # turn + 1) for a prompt's partial last unit.
    assert got == [
        Request(0, 0.0, 25, 100, (0, -1), UNIT_TOKENS, (2, 3, 4, 5, 6), 0, None, 0, 0.0, True),
        Request(1, 0.0, 135, 7, (0, 1, 2, 3, 4, 5, 6, 7, -2), UNIT_TOKENS, (), 0, None, 1, 0.0,
                True),
        Request(2, 1.0, 21, 5, (1 << 24, -(1 << 24) - 1), UNIT_TOKENS, (), 1, None, 0, 0.0,
                True),
    ]  # fmt: skip
    lines = tmp_path / "c.jsonl.bz2"
    lines.write_bytes(bz2.compress("".join(json.dumps(c) + "\n" for c in CONVS).encode()))
    assert list(read_trace(lines, "sharegpt")) == got
    exact = [{"conversations": [{"from": "human", "value": "?", "tokens": 32},
                                {"from": "gpt", "value": "!", "tokens": 17}]}]  # fmt: skip
    (tmp_path / "e.json").write_text(json.dumps(exact))
    (r,) = read_trace(tmp_path / "e.json", "sharegpt")
    assert (r.prompt_tokens, r.output_tokens, r.lengths_estimated) == (32, 17, False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[\n{"conversations": [{"from": "alien", "value": "x"}]}\n]',
         ":2: turn 0: speaker 'alien'; allowed: human, user, gpt, assistant, chatgpt, bard, bing, "
         "model, system"),
        ('[\n{"conversations": []},\n{"conversations": 5}\n]',
         ":3: expected a list under 'conversations' (or 'messages')"),
        ('[\n{"conversations": [\n{"from": "human", "value": "x", "tokens": 2.5}]}]',
         ":2: turn 0: tokens is 2.5; expected an integer from 0 to 100,000,000"),
        ('[\n{"conversations": [{"from": "human"', ":2: not valid JSON"),
        ('[{"conversations": []}', ":1: the JSON array is not closed"),
        ('[{"conversations": []}] x', ":1: text after the JSON array"),
        ('[{"conversations": [{"from": "human", "value": "x"}]}]',
         ": no requests in the trace (no question with an answer)"),
        ("", ": no requests in the trace"),
    ],
)  # fmt: skip
def test_sharegpt_errors_name_file_and_line(tmp_path, text, expected):
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(TraceError) as e:
        list(read_trace(p, "sharegpt"))
    assert str(e.value).startswith(f"{p}{expected}"), str(e.value)
    assert "\n" not in str(e.value)


def test_a_later_turn_hits_its_history_and_estimates_are_flagged(tmp_path):
    """A 32-token question and a 17-token answer fill three whole units (the answer's last
    token's KV is never computed: 48 of 49 tokens); the second turn reuses all three."""
    convs = [{"conversations": [
        {"from": "human", "value": "?", "tokens": 32}, {"from": "gpt", "value": "!", "tokens": 17},
        {"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "!", "tokens": 4},
    ]}]  # fmt: skip
    p = tmp_path / "c.json"
    p.write_text(json.dumps(convs))
    doc = scenario_doc(p, fmt="sharegpt")
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    first, second = res.requests
    assert (second["prompt_tokens"], second["hit_tokens"]) == (32 + 17 + 10, 48)
    assert second["arrival_s"] == first["finish_s"]  # no think time: closed loop
    assert res.summary["lengths_estimated_requests"] == 1
    assert "token counts of 1 requests are estimated" in res.table()
