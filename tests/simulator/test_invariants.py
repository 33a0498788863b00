"""Invariants under random workloads (hypothesis): nothing lost, blocks conserved, refcounts exact,
deterministic, and decode fast-forward identical to exact stepping."""

from __future__ import annotations

import pytest
from helpers import load_hypothesis_profile, scenario_doc, write_kvsim_trace
from hypothesis import given
from hypothesis import strategies as st

from kvsim.simulator import replica as replica_module
from kvsim.simulator import scenario_from_dict, simulate


@pytest.fixture
def checked(monkeypatch):
    """Check the scheduler's invariants at every engine boundary."""
    calls = {"n": 0}

    def on_boundary(replica):
        replica.scheduler.check_invariants()
        calls["n"] += 1

    monkeypatch.setattr(replica_module, "ON_BOUNDARY", on_boundary)
    return calls


UNIT = 64


@st.composite
def workloads(draw):
    """Requests with shared prefixes over a few documents; small pools force eviction/preemption
    (and, under msa with policies that evict inner units, holes to reuse around)."""
    n = draw(st.integers(1, 25))
    rows, t, next_id = [], 0.0, 1000
    docs = [list(range(d * 100, d * 100 + 8)) for d in range(3)]
    for _ in range(n):
        t += draw(st.floats(0, 0.05))
        prompt = draw(st.integers(1, 6 * UNIT))
        units = -(-prompt // UNIT)
        shared = draw(st.integers(0, min(units, 8)))
        doc = docs[draw(st.integers(0, 2))]
        blocks = doc[:shared] + list(range(next_id, next_id + units - shared))
        next_id += units
        rows.append(
            {
                "arrival_s": round(t, 6),
                "prompt_tokens": prompt,
                "output_tokens": draw(st.integers(1, 40)),
                "blocks": blocks,
                "unit_tokens": UNIT,
            }
        )
    return rows


def _doc(tmp_path, rows, **over):
    trace = write_kvsim_trace(tmp_path / "w.jsonl", rows)
    return scenario_doc(trace, **over)


load_hypothesis_profile()


@given(
    rows=workloads(),
    blocks=st.integers(30, 200),
    replicas=st.integers(1, 3),
    eviction_layout=st.one_of(
        st.tuples(
            st.sampled_from(["lru", "lfu", "fifo", "max_score", "helpers:OldestFootprint"]),
            st.sampled_from(["contiguous", "msa"]),
        ),
        # msa-only policies (holes are recomputed): the scenario loader refuses contiguous. An L
        # of a few decode iterations, re-estimated every few reuses, makes AsymCache's victims
        # depend on the clock within these short runs (its default L is a minute).
        st.tuples(
            st.sampled_from(
                [
                    "asymcache",
                    {"type": "asymcache", "initial_l_s": 0.03, "reestimate_every": 3},
                    "pensieve",
                ]
            ),
            st.just("msa"),
        ),
    ),
    routing=st.sampled_from(["round_robin", "least_loaded", "prefix_aware"]),
    budget=st.sampled_from([64, 256]),
    chunked=st.booleans(),
    chunking=st.sampled_from(["fixed", "adaptive"]),
    checkpoint=st.sampled_from([None, {"type": "every", "k": 128}, {"type": "dp", "n": 2}]),
    capture=st.sampled_from(["chunk", "scan"]),
    isolation=st.sampled_from([None, 2]),
)
def test_invariants_hold_and_fast_equals_exact(
    tmp_path,
    checked,
    rows,
    blocks,
    replicas,
    eviction_layout,
    routing,
    budget,
    chunked,
    chunking,
    checkpoint,
    capture,
    isolation,
):
    eviction, layout = eviction_layout
    cache = {"num_gpu_blocks": blocks, "eviction": eviction, "layout": layout}
    model = "llama-3.1-8b"
    if checkpoint is not None:  # a hybrid model: a state is 100 blocks of its KV
        model, cache["layout"] = "qwen3.5-0.8b", "contiguous"
        if not isinstance(eviction, str) or eviction in ("asymcache", "pensieve"):
            cache["eviction"] = "lru"  # msa-only policies: recurrent models resume contiguous
        cache.update(num_gpu_blocks=blocks + 250, checkpoint=checkpoint, isolation=isolation,
                     checkpoint_capture=capture)  # fmt: skip
    over = dict(
        model=model,
        cache=cache,
        cluster={"replicas": replicas},
        routing=routing,
        scheduler={
            "max_num_batched_tokens": budget,
            "max_num_seqs": 8,
            "enable_chunked_prefill": chunked,
            "chunking": chunking,
        },
    )
    fast = simulate(scenario_from_dict(_doc(tmp_path, rows, **over), base_dir=tmp_path))
    # Every request finishes or is reported dropped with a reason.
    assert fast.summary["requests"] == len(rows)
    statuses = [r["status"] for r in fast.requests]
    assert all(s == "done" or s.startswith("dropped: ") for s in statuses)
    assert checked["n"] > 0 or fast.summary["finished"] == 0  # every request dropped
    exact_doc = _doc(tmp_path, rows, simulation={"exact_steps": True}, **over)
    exact = simulate(scenario_from_dict(exact_doc, base_dir=tmp_path))
    assert fast.requests_csv() == exact.requests_csv()
    assert fast.summary == exact.summary  # utilisation, KV use, per-replica figures too
    again = simulate(scenario_from_dict(_doc(tmp_path, rows, **over), base_dir=tmp_path))
    assert again.requests_csv() == fast.requests_csv()
    assert again.summary == fast.summary


def test_pool_is_empty_of_references_at_the_end(tmp_path):
    rows = [
        {
            "arrival_s": 0.01 * i,
            "prompt_tokens": 300,
            "output_tokens": 200,
            "blocks": [1] + [100 * i + j for j in range(1, 5)],
            "unit_tokens": UNIT,
        }
        for i in range(20)
    ]
    from kvsim.simulator.cluster import Cluster

    c = Cluster(
        scenario_from_dict(_doc(tmp_path, rows, cache={"num_gpu_blocks": 64}), base_dir=tmp_path)
    )
    res = c.run()
    cache = c.replicas[0].scheduler.cache
    assert res.summary["finished"] == 20
    assert all(n.refs == 0 for n in cache.tree.nodes.values())
    assert cache.free + cache.node_blocks() == cache.capacity
    assert res.summary["preemptions"] > 0  # the pool is small enough to force recompute


@st.composite
def session_rows(draw):
    """Closed-loop sessions: each turn's prompt is the session's history (earlier prompts and
    answers, whose units are named by output_blocks) plus new units; some are agent jobs."""
    rows, t = [], 0.0
    for session in range(draw(st.integers(1, 6))):
        t += draw(st.floats(0, 0.05))
        agent = draw(st.booleans())
        history = list(range(session * 1000, session * 1000 + draw(st.integers(0, 3))))
        for turn in range(draw(st.integers(1, 4))):
            new = draw(st.integers(1, 3))
            prompt = history + list(range(session * 1000 + len(history),
                                          session * 1000 + len(history) + new))  # fmt: skip
            out_units = draw(st.integers(0, 2))
            answer = list(range(session * 1000 + len(prompt),
                                session * 1000 + len(prompt) + out_units))  # fmt: skip
            tail = draw(st.integers(1, UNIT))  # the prompt's last unit may be partial
            row = {
                "arrival_s": round(t, 6),
                "prompt_tokens": UNIT * (len(prompt) - 1) + tail,
                "output_tokens": max(1, out_units * UNIT + draw(st.integers(0, 5))),
                "blocks": prompt,
                "output_blocks": answer,
                "unit_tokens": UNIT,
                "session": session,
                "turn": turn,
                "think_s": draw(st.floats(0, 0.02)),
            }
            if agent:
                row["job"] = session
            rows.append(row)
            history = prompt + answer
    return rows


@given(
    rows=session_rows(),
    blocks=st.integers(40, 200),
    eviction=st.sampled_from(["lru", "continuum", "helpers:OldestFootprint"]),
    layout=st.sampled_from(["contiguous", "msa"]),
    chunking=st.sampled_from(["fixed", "adaptive"]),
)
def test_sessions_conserve_blocks_and_fast_equals_exact(
    tmp_path, checked, rows, blocks, eviction, layout, chunking
):
    over = dict(
        cache={"num_gpu_blocks": blocks, "eviction": eviction, "layout": layout},
        scheduler={"max_num_batched_tokens": 128, "max_num_seqs": 8, "chunking": chunking},
    )
    fast = simulate(scenario_from_dict(_doc(tmp_path, rows, **over), base_dir=tmp_path))
    assert fast.summary["requests"] == len(rows)
    sessions = {r["session"] for r in rows}
    assert fast.summary["jobs"] == len(sessions)
    exact_doc = _doc(tmp_path, rows, simulation={"exact_steps": True}, **over)
    exact = simulate(scenario_from_dict(exact_doc, base_dir=tmp_path))
    assert fast.requests_csv() == exact.requests_csv()
    assert fast.summary == exact.summary


def _pd_doc(tmp_path, rows, prefill_blocks, decode_blocks, codec, first_token, scope, **over):
    """A prefill and a decode pool of Llama-3.1-8B on H100s joined by a slow link."""
    doc = _doc(tmp_path, rows, **over)
    del doc["cluster"]
    doc["pools"] = [
        {"role": "prefill", "replicas": over.pop("p_replicas", 2),
         "cache": {"num_gpu_blocks": prefill_blocks}},
        {"role": "decode", "replicas": over.pop("d_replicas", 2),
         "cache": {"num_gpu_blocks": decode_blocks}},
    ]  # fmt: skip
    doc["links"] = [
        {"producer": "prefill", "consumer": "decode", "bandwidth_gbit_per_s": 2.0,
         "latency_s": 1e-4, "overhead_s": 5e-5, "scope": scope},
    ]  # fmt: skip
    doc["transfer"] = {"codec": codec, "first_token": first_token}
    return doc


CODECS = [
    "raw",
    {"type": "quantized", "bits": 4},
    {"type": "layer_recompute", "k": 3},
    "consumer_prefill",
    {"type": "scd", "rank_k": 64, "rank_v": 96, "rank_h": 128, "patch_layers": 4},
    {"type": "scd_reuse_only", "rank_k": 32, "rank_v": 32},
]


@given(
    rows=workloads(),
    prefill_blocks=st.integers(30, 120),
    decode_blocks=st.integers(30, 120),
    codec=st.sampled_from(CODECS),
    first_token=st.sampled_from(["producer", "consumer"]),
    scope=st.sampled_from(["shared", "producer", "pair"]),
    pipelining=st.booleans(),
    routing=st.sampled_from(["round_robin", "least_loaded", "prefix_aware"]),
    budget=st.sampled_from([64, 256]),
)
def test_disaggregated_pools_conserve_blocks_and_fast_equals_exact(
    tmp_path, checked, rows, prefill_blocks, decode_blocks, codec, first_token, scope,
    pipelining, routing, budget,
):  # fmt: skip
    over = dict(
        routing=routing,
        scheduler={"max_num_batched_tokens": budget, "max_num_seqs": 4},
    )
    doc = _pd_doc(tmp_path, rows, prefill_blocks, decode_blocks, codec, first_token, scope,
                  **over)  # fmt: skip
    doc["transfer"]["pipelining"] = pipelining
    from kvsim.simulator.cluster import Cluster

    c = Cluster(scenario_from_dict(doc, base_dir=tmp_path))
    fast = c.run()
    assert fast.summary["requests"] == len(rows)
    statuses = [r["status"] for r in fast.requests]
    assert all(s == "done" or s.startswith("dropped: ") for s in statuses)
    done = sum(s == "done" for s in statuses)
    # Every finished request went through the link once (except answers of one token that the
    # prefill replica emitted itself), and every pool is empty of references at the end.
    one_token = sum(r["status"] == "done" and r["output_tokens"] == 1 for r in fast.requests)
    expected = done - (one_token if first_token == "producer" else 0)
    assert fast.summary["transfer"]["handoffs"] == expected
    assert fast.summary["links"]["prefill-decode"]["transfers"] == expected
    for r in c.replicas:
        cache = r.scheduler.cache
        assert not r.scheduler.has_work()
        assert all(n.refs == 0 for n in cache.tree.nodes.values())
        assert cache.free + cache.node_blocks() == cache.capacity
    exact = simulate(scenario_from_dict({**doc, "simulation": {"exact_steps": True}},
                                        base_dir=tmp_path))  # fmt: skip
    assert fast.requests_csv() == exact.requests_csv()
    again = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert again.requests_csv() == fast.requests_csv()
    assert again.summary == fast.summary


@given(
    rows=workloads(),
    blocks=st.integers(30, 70),
    cpu_blocks=st.integers(4, 80),
    replicas=st.integers(1, 3),
    cpu_eviction=st.sampled_from(["lru", "fifo", "helpers:ShallowestFirst"]),
    routing=st.sampled_from(["round_robin", "prefix_aware"]),
    pcie=st.sampled_from([0.5, 8.0, 400.0]),
    disaggregated=st.booleans(),
)
def test_cpu_tier_conserves_blocks_and_fast_equals_exact(
    tmp_path, checked, rows, blocks, cpu_blocks, replicas, cpu_eviction, routing, pcie,
    disaggregated,
):  # fmt: skip
    tier = {"num_blocks": cpu_blocks, "eviction": cpu_eviction, "pcie_gbit_per_s": pcie}
    over = dict(
        routing=routing,
        cluster={"replicas": replicas},
        cache={"num_gpu_blocks": blocks, "cpu_tier": tier},
        scheduler={"max_num_batched_tokens": 128, "max_num_seqs": 4},
    )
    doc = _doc(tmp_path, rows, **over)
    if disaggregated:  # the tier on both pools; the decode pool's holds preempted prompts
        doc = _pd_doc(tmp_path, rows, blocks, blocks, "raw", "producer", "producer", **over)
        for pool in doc["pools"]:
            pool["cache"]["cpu_tier"] = tier
    from kvsim.simulator.cluster import Cluster

    c = Cluster(scenario_from_dict(doc, base_dir=tmp_path))
    fast = c.run()
    assert fast.summary["requests"] == len(rows)
    assert all(r["status"] == "done" or r["status"].startswith("dropped: ")
               for r in fast.requests)  # fmt: skip
    assert checked["n"] > 0
    for r in c.replicas:
        cache = r.scheduler.cache
        r.scheduler.check_invariants()
        assert cache.free + cache.node_blocks() == cache.capacity
        assert all(n.refs == 0 for n in cache.cpu.tree.nodes.values())
    tiers = fast.summary["cpu_tier"]
    ratio = tiers if "hit_ratio_cpu" in tiers else tiers["prefill"]
    assert ratio["hit_ratio_gpu"] + ratio["hit_ratio_cpu"] == pytest.approx(
        fast.summary["prefix_hit_ratio"]
    )
    exact = simulate(scenario_from_dict({**doc, "simulation": {"exact_steps": True}},
                                        base_dir=tmp_path))  # fmt: skip
    assert fast.requests_csv() == exact.requests_csv()
    again = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert again.summary == fast.summary


def test_asymcache_evicts_at_exact_boundaries_under_fast_forward(tmp_path, monkeypatch):
    """A time-dependent policy's victims must be chosen at the iteration boundary that needs the
    blocks, not when a fast-forwarded decode run ends. A (units 1, 2) finishes at tA and C
    (unit 3) at tC; ΔT(2) > ΔT(1) = ΔT(3) (unit 2 sits deeper). B's 200 decode steps outgrow the
    free pool twice. With p = 0.999 and r = 1000, f is nearly flat up to L and then falls e-fold
    per L: below L the cheaper unit goes first, beyond it the one idle longer. The second
    eviction, at boundary t2, finds unit 2 idle less than L: unit 3 goes. At the end of B's run,
    unit 2 would be idle more than L and unit 3 not: evicting there would take unit 2. D then
    reuses unit 2."""
    from kvsim.simulator.cluster import Cluster
    from kvsim.simulator.policies.asymcache import AsymCache

    rows = [
        {"arrival_s": 0.0, "prompt_tokens": 2 * UNIT, "output_tokens": 1, "blocks": [1, 2]},
        {"arrival_s": 0.1, "prompt_tokens": UNIT, "output_tokens": 1, "blocks": [3]},
        {"arrival_s": 0.2, "prompt_tokens": UNIT + 1, "output_tokens": 200, "blocks": [4, 5]},
        {"arrival_s": 3.0, "prompt_tokens": 3 * UNIT, "output_tokens": 1, "blocks": [6, 2, 7]},
    ]
    for r in rows:
        r["unit_tokens"] = UNIT
    l_s = 1.43
    evictions = []
    pop = AsymCache.pop  # the policy owns its candidates: the tree's victims are what it pops

    def logged(self, now):
        v = pop(self, now)
        if v is not None:
            evictions.append((now / 1e9, v.id))
        return v

    monkeypatch.setattr(AsymCache, "pop", logged)
    eviction = {"type": "asymcache", "p": 0.999, "r": 1000, "initial_l_s": l_s}
    runs = {}
    for mode in ("exact", "fast"):
        evictions.clear()
        over = {"cache": {"num_gpu_blocks": 22, "layout": "msa", "eviction": eviction}}
        if mode == "exact":
            over["simulation"] = {"exact_steps": True}
        cluster = Cluster(scenario_from_dict(_doc(tmp_path, rows, **over), base_dir=tmp_path))
        runs[mode] = (
            cluster.run(),
            list(evictions),
            sorted(cluster.replicas[0].scheduler.cache.tree.nodes),
        )
    exact, log, resident = runs["exact"]
    t_a, t_c, t_end = (float(exact.requests[i]["finish_s"]) for i in (0, 1, 2))
    assert [v for _, v in log] == [1, 3] and resident == [2, 4, 6, 7]
    t2 = log[1][0]
    assert t2 - t_a < l_s < t_end - t_a and t_end - t_c < l_s  # the premises above
    assert exact.requests[3]["hit_tokens"] == UNIT
    fast, fast_log, fast_resident = runs["fast"]
    assert fast.requests_csv() == exact.requests_csv()
    assert fast_log == log and fast_resident == resident
