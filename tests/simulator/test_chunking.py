"""Adaptive chunked prefill: the rule in simulator/chunking.py, driven with the real pricer."""

from __future__ import annotations

import pytest

from kvsim.simulator.cache import KVCache
from kvsim.simulator.catalog import get_gpu, get_model
from kvsim.simulator.chunking import AdaptiveChunking
from kvsim.simulator.latency import IterationPricer, RooflineModel
from kvsim.simulator.policies import EVICTION
from kvsim.simulator.scheduler import Scheduler, Seq
from kvsim.traces import Request

BS = 16


def _chunking(**kw) -> AdaptiveChunking:
    pricer = IterationPricer(get_model("llama-3.1-8b"), 1, RooflineModel(get_gpu("h100-sxm")))
    args = dict(target_s=0.05, decode_target_s=0.03, queue_tokens=16384, max_target_s=0.5)
    args.update(kw)
    return AdaptiveChunking(pricer, BS, 8192, **args)


def test_target_grows_with_the_queue_and_is_capped_while_decoding():
    c = _chunking()
    assert c.target(0, 0) == pytest.approx(0.05)
    assert c.target(0, 16384) == pytest.approx(0.10)
    assert c.target(0, 10**7) == pytest.approx(0.5)  # max_target_s
    assert c.target(3, 16384) == pytest.approx(0.03)  # decodes: the TPOT target caps it


@pytest.mark.parametrize(
    "decodes, queued, context",
    [(0, 0, 0), (0, 40000, 0), (32, 0, 20000), (32, 40000, 20000), (200, 5000, 1000)],
)
def test_budget_is_the_largest_whole_number_of_blocks_within_the_target(decodes, queued, context):
    c = _chunking()
    dec_kv = decodes * 3000
    b = c.budget(decodes, dec_kv, decodes, queued, context)
    assert b % BS == 0 and BS <= b <= 8192 - decodes
    target = c.target(decodes, queued)
    if b > BS:
        assert c.predicted_s(decodes, dec_kv, decodes, b, context) <= target
    if b + BS <= 8192 - decodes:
        assert c.predicted_s(decodes, dec_kv, decodes, b + BS, context) > target


def test_chunks_grow_with_the_queue_and_shrink_while_decoding():
    c = _chunking()
    idle = c.budget(0, 0, 0, 0, 20000)
    queued = c.budget(0, 0, 0, 30000, 20000)
    decoding = c.budget(64, 64 * 4000, 64, 30000, 20000)
    assert decoding < idle < queued


def test_at_least_one_block_even_when_nothing_fits():
    c = _chunking(target_s=1e-9, decode_target_s=1e-9)
    assert c.budget(10, 10_000, 10, 0, 50_000) == BS


def test_the_scheduler_prefills_what_the_budget_allows():
    """One long prompt alone: the first iteration computes exactly the budget for an empty
    context and that queue; the next one the budget at the new cursor."""
    c = _chunking()
    cache = KVCache(100_000, BS, EVICTION.create("lru", None))
    sched = Scheduler(cache, 8192, 8, 8192, True, chunking=c)
    s = Seq(Request(0, 0.0, 30000, 2), 0)
    sched.add(s)
    expected = c.budget(0, 0, 0, 30000, 0)
    batch = sched.schedule()
    assert [n for _, n in batch.prefills] == [expected]
    sched.complete(batch, 1, 1)
    expected2 = c.budget(0, 0, 0, 30000 - expected, expected)
    assert [n for _, n in sched.schedule().prefills] == [expected2]
