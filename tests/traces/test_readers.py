"""Trace readers on the real public files and on small hand-written ones."""

from __future__ import annotations

import math

import pytest
from helpers import shared_trace

from kvsim.traces import Request, TraceError, read_trace, synthetic_requests, trace_stats
from kvsim.traces.generators import LengthDist


def test_mooncake_conversation_file():
    reqs = list(read_trace(shared_trace("mooncake_conversation.jsonl"), "mooncake"))
    assert len(reqs) == 12031
    r = reqs[0]
    assert (r.arrival_s, r.prompt_tokens, r.output_tokens) == (0.0, 6758, 500)
    assert r.blocks[:3] == (0, 1, 2) and len(r.blocks) == math.ceil(6758 / 512)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))


def test_trace_stats_prefix_hit_ratios_match_the_measured_facts():
    conv = trace_stats(read_trace(shared_trace("mooncake_conversation.jsonl"), "mooncake"))
    synth = trace_stats(read_trace(shared_trace("mooncake_synthetic.jsonl"), "mooncake"))
    assert round(conv.prefix_hit_ratio, 3) == 0.366
    assert round(synth.prefix_hit_ratio, 3) == 0.640
    assert synth.requests == 3993


def test_azure_file():
    reqs = list(read_trace(shared_trace("azure_2023_code.csv"), "azure"))
    assert len(reqs) == 8819
    assert reqs[0].arrival_s == 0.0 and reqs[0].prompt_tokens == 4808
    assert reqs[1].arrival_s == pytest.approx(0.052, abs=1e-6)
    assert reqs[0].blocks == ()


def test_burstgpt_skips_failed_rows(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,100,20,120,Conversation log\n"
        "6,ChatGPT,50,0,50,Conversation log\n"
        "7.5,GPT-4,30,3,33,API log\n"
    )
    reqs = list(read_trace(p, "burstgpt"))
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs] == [
        (0.0, 100, 20),
        (2.5, 30, 3),
    ]


@pytest.mark.parametrize(
    "line, fragment",
    [
        (
            '{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}',
            "needs ceil(600/512) = 2",
        ),
        (
            '{"timestamp": -1, "input_length": 6, "output_length": 1, "hash_ids": [1]}',
            "field 'timestamp'",
        ),
        ('{"timestamp": 0, "output_length": 1, "hash_ids": [1]}', "missing field 'input_length'"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_mooncake_rows(tmp_path, line, fragment):
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"timestamp": 0, "input_length": 6, "output_length": 1, "hash_ids": [9]}\n' + line + "\n"
    )
    with pytest.raises(TraceError) as e:
        list(read_trace(p, "mooncake"))
    assert str(e.value).startswith(f"{p}:2: ") and fragment in str(e.value)


def test_bad_azure_header_and_backwards_time(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("TIME,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceError, match="missing column 'TIMESTAMP'"):
        list(read_trace(p, "azure"))
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0,10,1\n2023-11-16 18:17:03.0,10,1\n"
    )
    with pytest.raises(TraceError, match=r"a.csv:3: timestamp goes backwards"):
        list(read_trace(p, "azure"))


def test_synthetic_is_deterministic_streaming_and_shares_prefixes():
    def gen(seed):
        return synthetic_requests(
            5000,
            10.0,
            LengthDist("lognormal", median=500, sigma=0.5),
            LengthDist("uniform", low=1, high=50),
            arrival="gamma",
            cv=2.0,
            prefixes=4,
            prefix_tokens=512,
            unit_tokens=128,
            seed=seed,
        )

    a, b = list(gen(7)), list(gen(7))
    assert a == b and a != list(gen(8))
    assert all(isinstance(r, Request) for r in a)
    assert all(len(r.blocks) == math.ceil(r.prompt_tokens / 128) for r in a)
    first_units = {r.blocks[0] for r in a}
    assert first_units <= {0, 4, 8, 12}  # four prefixes of four units each
    rate = len(a) / a[-1].arrival_s
    assert 9.0 < rate < 11.0
    s = trace_stats(iter(a))
    assert s.prefix_hit_ratio > 0.3  # the shared system prompts hit
