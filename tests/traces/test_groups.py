"""Grouped prompts over shared contexts (document QA, system prompts)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kvsim.traces.generators import LengthDist
from kvsim.traces.groups import group_sizes, grouped_requests

FIXED = LengthDist("fixed", value=1)


def _gen(**kw):
    args = dict(
        groups=5,
        queries=LengthDist("uniform", low=2, high=9),
        context_tokens=LengthDist("uniform", low=500, high=3000),
        own_tokens=LengthDist("uniform", low=10, high=200),
        output_tokens=FIXED,
        rate=4.0,
        unit_tokens=64,
        seed=3,
    )
    args.update(kw)
    return list(grouped_requests(**args))


def test_requests_interleave_groups_by_arrival_and_share_each_groups_context():
    reqs = _gen()
    assert [r.id for r in reqs] == list(range(len(reqs)))
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    by_group = defaultdict(list)
    for r in reqs:
        by_group[r.blocks[0] // 10**9 - 1].append(r)
    sizes = group_sizes(5, LengthDist("uniform", low=2, high=9), 3)
    assert [len(by_group[g]) for g in range(5)] == sizes and sum(sizes) == len(reqs)
    own_ids = []
    for g, rs in by_group.items():
        head = [b for b in rs[0].blocks if b >= 10**9]  # the context's whole units
        assert head == [(g + 1) * 10**9 + i for i in range(len(head))]
        for r in rs:
            assert list(r.blocks[: len(head)]) == head and r.blocks[len(head)] < 10**9
            own_ids += list(r.blocks[len(head) :])
            assert len(r.blocks) == -(-r.prompt_tokens // 64)
    assert len(own_ids) == len(set(own_ids))  # own units never shared


def test_prompts_are_clipped_by_shortening_the_context():
    reqs = _gen(context_tokens=LengthDist("fixed", value=5000),
                own_tokens=LengthDist("fixed", value=100), max_prompt_tokens=1000)  # fmt: skip
    assert {r.prompt_tokens for r in reqs} == {1000}
    assert {sum(b >= 10**9 for b in r.blocks) for r in reqs} == {900 // 64}


def test_each_group_is_a_poisson_process_of_rate_over_groups_and_all_start_at_once():
    reqs = _gen(groups=4, queries=LengthDist("fixed", value=3000), rate=8.0)
    gaps = defaultdict(list)
    last = {}
    for r in reqs:
        g = r.blocks[0] // 10**9
        gaps[g].append(r.arrival_s - last.get(g, 0.0))
        last[g] = r.arrival_s
    for g in gaps:  # mean 0.5 s, CV 1 (exponential), over 3,000 gaps each
        x = np.array(gaps[g])
        assert abs(x.mean() - 0.5) < 0.03 and abs(x.std() / x.mean() - 1) < 0.06
    assert max(gaps[g][0] for g in gaps) < 3.0  # every group starts near time 0


def test_same_arguments_same_requests():
    assert _gen() == _gen() and _gen(seed=4) != _gen()
