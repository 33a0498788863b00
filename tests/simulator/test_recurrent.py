"""Hybrid and recurrent models: layer mixes, state memory, the resume rule of DESIGN §5.3, where
checkpoints are stored, the isolation cache — driven directly and through scenarios."""

from __future__ import annotations

import json

import pytest
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.cache import KVCache
from kvsim.simulator.catalog import get_gpu, get_model
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency import IterationPricer, RooflineModel
from kvsim.simulator.policies import CHECKPOINT, EVICTION
from kvsim.simulator.scheduler import DONE, Scheduler, Seq
from kvsim.traces import Request

BS, UNIT, SB = 16, 64, 3  # block size, unit, blocks of one state


def test_catalog_hybrids_have_their_layer_mix_and_state_sizes():
    """Nemotron-H-8B: 24 Mamba-2, 4 attention, 24 MLP layers, a 97.41 MiB state (24 × (128 × 64
    × 128 × 4 + 10,240 × 3 × 2) bytes); Qwen3.5-0.8B: 18 Gated DeltaNet + 6 attention layers,
    18 × (16 × 128 × 128 × 4 + 6,144 × 3 × 2) bytes; Mamba-2 2.7B: no KV at all."""
    n = get_model("nemotron-h-8b")
    assert (n.attention_layers, n.recurrent.layers, n.mlp.layers) == (4, 24, 24)
    assert n.state_bytes == 24 * (128 * 64 * 128 * 4 + 10240 * 3 * 2) == 102_137_856
    assert n.kv_bytes_per_token == 4 * 2 * 8 * 128 * 2 and not n.mlp.gated
    q = get_model("qwen3.5-0.8b")
    assert (q.attention_layers, q.recurrent.layers, q.recurrent.kind) == (6, 18, "gdn")
    assert q.state_bytes == 18 * (16 * 128 * 128 * 4 + 6144 * 3 * 2)
    assert q.kv_bytes_per_token == 6 * 2 * 2 * 256 * 2 == 12288
    m = get_model("mamba2-2.7b")
    assert m.attention is None and m.kv_bytes_per_token == 0
    assert m.state_bytes == 64 * (80 * 64 * 128 * 4 + (5120 + 256) * 3 * 2)


def test_recurrent_layers_scan_prompts_and_step_decodes():
    """A pure-decode iteration prices one recurrent step per sequence, constant in the context
    (so decode runs stay affine); a prompt chunk prices a scan over its tokens."""
    p = IterationPricer(get_model("qwen3.5-0.8b"), 1, RooflineModel(get_gpu("h100-sxm")))
    assert p.recurrent_s(0, 8) > 0 and p.recurrent_s(512, 0) > p.recurrent_s(64, 0)
    a = p.iteration_ns(8, 8, 8, 8 * 1000, 8 * 1000, 8, decodes=8)
    b = p.iteration_ns(8, 8, 8, 8 * 1000, 8 * 1000, 8, decodes=0)
    assert a != b  # the same tokens as decodes (steps) or prompt tokens (a scan)
    run = p.decode_run(8, 8000, 20, 0)
    t = 0
    for i in range(20):
        t += p.decode_run(8, 8000 + 8 * i, 1, t).end - t
    assert run.end == t


class _At:
    """A checkpoint placement with fixed positions (for tests)."""

    def __init__(self, *positions):
        self.p = positions

    def positions(self, prompt_tokens):
        return tuple(x for x in self.p if x <= prompt_tokens)


def _sched(capacity=400, checkpoint=None, budget=256, chunked=True, isolation=None):
    cache = KVCache(capacity, BS, EVICTION.create("lru", None), state_blocks=SB,
                    isolation=isolation)  # fmt: skip
    sched = Scheduler(cache, budget, 8, budget, chunked, checkpoint=checkpoint, state_bytes=1000)
    return cache, sched


def _run(sched, req, now=0):
    s = Seq(req, now)
    sched.add(s)
    batches = []
    while sched.has_work():
        sched.now_ns = now
        b = sched.schedule()
        batches.append(b)
        sched.complete(b, 1, now + 1)
        sched.check_invariants()
        now += 10
    return s, batches


def _req(rid, units, tail=UNIT, ids=None, out=2):
    ids = ids or tuple(range(1, units + 1))
    return Request(rid, 0.0, UNIT * (units - 1) + tail, out, ids, UNIT)


def test_chunks_end_at_checkpoints_which_are_stored_with_copies():
    """Checkpoints at 128 and 256 (after units 2 and 4) of a 5-unit prompt: the 256-token budget
    is cut at 128, then at 256, then the rest; each cut chunk stores a state (3 blocks, a copy op)
    and the sequence holds its live state (3 blocks) meanwhile."""
    cache, sched = _sched(checkpoint=_At(128, 256))
    s, batches = _run(sched, _req(0, 5))
    assert [[n for _, n in b.prefills] for b in batches[:3]] == [[128], [128], [64]]
    assert [len(b.extra_ops) for b in batches[:3]] == [1, 1, 0]
    assert batches[0].extra_ops[0].nbytes == 1000 and batches[0].extra_ops[0].path == "d2d"
    assert sorted(cache.tree.states) == [2, 4]
    assert [cache.tree.states[i].start_token for i in (2, 4)] == [128, 256]
    assert s.phase == DONE and cache.free + cache.node_blocks() == cache.capacity


def test_resume_from_the_deepest_checkpoint_within_the_kv_prefix():
    """States after units 2 and 4; KV for units 1..5 resident. A prompt sharing 5 units (and a
    6th of its own) resumes at 256 (the deepest checkpoint ≤ min(KV depth 320, its last token));
    it reuses 256 tokens, recomputes from there in all layers, and loads one state. With the KV
    of units 4 and 5 gone, it resumes at 128. With no checkpoint it recomputes everything."""
    cache, sched = _sched(checkpoint=_At(128, 256))
    _run(sched, _req(0, 5))
    other = _req(1, 6, ids=(1, 2, 3, 4, 5, 99))
    hit = cache.lookup(other, 0)
    assert (hit.tokens, hit.ranges, hit.units, hit.resume.id) == (256, ((0, 256),), 4, 4)
    assert [n.id for n in hit.nodes] == [1, 2, 3, 4]
    s, batches = _run(sched, other, now=1000)
    assert s.hit_tokens == 256 and batches[0].extra_ops  # the state loaded
    assert batches[0].kv_tokens == 6 * UNIT  # prefill from 256 over the reused 256

    cache, sched = _sched(checkpoint=_At(128, 256))
    _run(sched, _req(0, 3, ids=(1, 2, 3)))  # state after unit 2 only (256 > its prompt)
    hit = cache.lookup(_req(1, 6, ids=(1, 2, 3, 7, 8, 9)), 0)
    assert hit.tokens == 128 and hit.resume.id == 2
    cache, sched = _sched(checkpoint=None)
    _run(sched, _req(0, 5))
    assert cache.lookup(other, 0).tokens == 0  # KV resident, but no state to resume from


def test_the_last_token_is_computed_even_at_a_checkpoint():
    """A prompt of exactly 4 units with a state after unit 4 resumes from unit 2's (≤ 255)."""
    cache, sched = _sched(checkpoint=_At(128, 256))
    _run(sched, _req(0, 4))
    assert sorted(cache.tree.states) == [2, 4]
    assert cache.lookup(_req(1, 4), 0).tokens == 128


def test_without_chunked_prefill_every_passed_checkpoint_is_stored():
    cache, sched = _sched(checkpoint=_At(128, 256), budget=512, chunked=False)
    _, batches = _run(sched, _req(0, 5))
    assert [n for _, n in batches[0].prefills] == [320] and len(batches[0].extra_ops) == 2
    assert sorted(cache.tree.states) == [2, 4]


def test_scan_capture_stores_the_checkpoints_a_chunk_passes_without_cutting_it():
    """``capture: scan``: the 256-token chunk passes 128 and 256 and stores both (two copies);
    the prompt takes two chunks instead of three."""
    cache = KVCache(400, BS, EVICTION.create("lru", None), state_blocks=SB)
    sched = Scheduler(cache, 256, 8, 256, True, checkpoint=_At(128, 256), state_bytes=1000,
                      capture="scan")  # fmt: skip
    s, batches = _run(sched, _req(0, 5))
    assert [[n for _, n in b.prefills] for b in batches[:2]] == [[256], [64]]
    assert [len(b.extra_ops) for b in batches[:2]] == [2, 0]
    assert sorted(cache.tree.states) == [2, 4] and s.phase == DONE


def test_scan_capture_keeps_a_later_chunks_deepest_checkpoints_that_could_fit():
    """A 9-unit prompt in chunks of 256 with checkpoints after units 5..8: the second chunk
    (256..512) passes all four; beside its KV (32 blocks with the first chunk's) and the live
    state (3) a 41-block pool could hold two (6 blocks): those after units 7 and 8."""
    cache = KVCache(41, BS, EVICTION.create("lru", None), state_blocks=SB)
    sched = Scheduler(cache, 256, 8, 256, True, checkpoint=_At(320, 384, 448, 512),
                      state_bytes=1000, capture="scan")  # fmt: skip
    sched.add(Seq(_req(0, 9, out=1), 0))
    batches = []
    for t in (0, 10):
        sched.now_ns = t
        batches.append(sched.schedule())
        sched.complete(batches[-1], 1, t + 1)
    assert [[n for _, n in b.prefills] for b in batches] == [[256], [256]]
    assert [len(b.extra_ops) for b in batches] == [0, 2]
    assert sorted(cache.tree.states) == [7, 8] and cache.free == 0


def test_checkpoints_a_pool_could_never_hold_at_admission_are_not_planned():
    """A 5-unit prompt (20 blocks) in one pass with checkpoints after units 1..4: a 32-block pool
    holds the prompt, the live state (3) and 3 checkpoints (9) — the deepest three are stored,
    not a request waiting forever. Chunked, a 193-token prompt resuming at 128 holds its hit (8
    KV blocks) and the loaded state (3); a chunk cut at 192 (4 blocks) beside its live state (3)
    and that checkpoint (3) would need 21 of 19 blocks: the checkpoint is skipped and the chunk
    runs to the end of the prompt (65 tokens, 5 blocks: 19 in all)."""
    cache, sched = _sched(capacity=32, checkpoint=_At(64, 128, 192, 256), budget=512,
                          chunked=False)  # fmt: skip
    s, batches = _run(sched, _req(0, 5, out=1))
    assert len(batches[0].extra_ops) == 3 and sorted(cache.tree.states) == [2, 3, 4]
    assert s.phase == DONE

    cache, sched = _sched(capacity=19, checkpoint=_At(128, 192))
    _run(sched, _req(0, 2, ids=(1, 2), out=1))  # KV of units 1, 2, the state after unit 2
    assert sorted(cache.tree.states) == [2]
    s, batches = _run(sched, _req(1, 4, tail=1, ids=(1, 2, 3, 4), out=1), now=1000)
    assert s.hit_tokens == 128 and [n for _, n in batches[0].prefills] == [65]
    assert len(batches[0].extra_ops) == 1  # the state loaded; none stored
    assert sorted(cache.tree.states) == [2] and s.phase == DONE


def test_isolation_cache_keeps_the_last_n_sequences_checkpoints():
    cache, sched = _sched(checkpoint=_At(64), isolation=2)
    for i in range(4):
        _run(sched, _req(i, 2, ids=(100 * i + 1, 100 * i + 2)), now=100 * i)
    assert sorted(cache.tree.states) == [201, 301]  # the first two sequences' were dropped
    assert cache.evictions == 2


def test_an_isolation_entry_holds_the_resident_checkpoints_at_its_positions():
    """As the paper's FIFO of whole entries: a later question on document A (units 1, 2) holds
    A's checkpoint after unit 1 again — found resident, not stored twice — so it outlives the
    first question's entry; B's (stored by the second sequence only) goes when that leaves."""
    cache, sched = _sched(checkpoint=_At(64), isolation=2)
    _run(sched, _req(0, 3, ids=(1, 2, 3)), now=0)  # stores the state after unit 1 (id 1)
    _run(sched, _req(1, 2, ids=(11, 12)), now=100)  # document B: the state after unit 11
    s, batches = _run(sched, _req(2, 3, ids=(1, 2, 4)), now=200)  # resumes at 64 on A
    assert s.hit_tokens == 64 and len(batches[0].extra_ops) == 1  # loaded, nothing stored
    assert s.states == [cache.tree.states[1]]
    assert sorted(cache.tree.states) == [1, 11]  # entries 2, 3 in the window; 1 holds A's
    _run(sched, _req(3, 2, ids=(21, 22)), now=300)  # entry 2 (B) leaves the window
    assert sorted(cache.tree.states) == [1, 21]
    _run(sched, _req(4, 2, ids=(31, 32)), now=400)  # entry 3 (A, again) leaves too
    assert sorted(cache.tree.states) == [21, 31] and cache.evictions == 2


def test_a_checkpoint_found_resident_at_store_time_joins_the_entry():
    """Two questions on document A run together and both plan the state after unit 1: the first
    stores it, the second finds it resident when its chunk ends and holds it too. With a window
    of two entries, a third sequence pushes the first out, and the second keeps A's state."""
    cache, sched = _sched(checkpoint=_At(64), isolation=2)
    a, b = Seq(_req(0, 2, ids=(1, 2)), 0), Seq(_req(1, 2, ids=(1, 3)), 0)
    sched.add(a)
    sched.add(b)
    now = 0
    while sched.has_work():
        sched.now_ns = now
        sched.complete(sched.schedule(), 1, now + 1)
        now += 10
    assert a.states == b.states == [cache.tree.states[1]]
    _run(sched, _req(2, 2, ids=(11, 12)), now=now)
    assert sorted(cache.tree.states) == [1, 11]


def test_a_model_without_attention_holds_states_only():
    """Mamba-2: tokens cost no blocks; a sequence holds its state (1 block = 1 state here)."""
    cache = KVCache(10, BS, EVICTION.create("lru", None), state_blocks=1, kv_free=True)
    sched = Scheduler(cache, 256, 8, 256, True, checkpoint=_At(64), state_bytes=1000)
    s, _ = _run(sched, _req(0, 3, out=40))
    assert s.generated == 40 and cache.free == 9 and list(cache.tree.states) == [1]
    hit = cache.lookup(_req(1, 3, ids=(1, 2, 9)), 0)
    assert hit.tokens == 64 and hit.nodes == () and hit.resume.id == 1
    # Unit 1's state is the state after the first unit only: a prompt holding unit 1 second
    # (after other content) cannot resume from it.
    assert cache.lookup(_req(2, 3, ids=(8, 1, 9)), 0).tokens == 0


def test_a_request_must_fit_beside_its_live_state_and_one_checkpoint(tmp_path):
    """A hybrid sequence holds its KV, its live state and, while storing one, a checkpoint: a
    request whose KV leaves room for one state but not two is dropped; one block less of KV runs."""
    from kvsim.simulator.cluster import Cluster

    def run(prompt_tokens):
        rows = [{"arrival_s": 0.0, "prompt_tokens": prompt_tokens, "output_tokens": 1}]
        trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
        doc = scenario_doc(trace, model="qwen3.5-0.8b", cache={"num_gpu_blocks": 400})
        c = Cluster(scenario_from_dict(doc, base_dir=tmp_path))
        return c.entry.state_blocks, c.run().requests[0]["status"]

    sb, _ = run(16)
    kv = 400 - 2 * sb  # blocks of KV that fit beside two states
    assert run(kv * 16)[1] == "done"
    assert run(kv * 16 + 1)[1] == "dropped: needs more KV blocks than a replica has (400)"


def _rows(n_docs=3, questions=4):
    rows = []
    for _ in range(questions):
        for d in range(n_docs):
            doc = [1000 * d + u for u in range(6)]
            rows.append({"arrival_s": 0.05 * len(rows), "prompt_tokens": 7 * UNIT,
                         "output_tokens": 3, "blocks": doc + [10**6 + len(rows)],
                         "unit_tokens": UNIT})  # fmt: skip
    return rows


@pytest.mark.parametrize("checkpoint", [{"type": "every", "k": 128}, {"type": "dp", "n": 2},
                                        "sqrt", "log2", {"type": "balanced", "n": 3}])  # fmt: skip
@pytest.mark.parametrize("model", ["qwen3.5-0.8b", "nemotron-h-8b", "mamba2-2.7b"])
def test_hybrid_scenarios_run_and_fast_equals_exact(tmp_path, checkpoint, model):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", _rows())
    # (a Nemotron-H state is 390 blocks of 16 tokens of its KV)
    doc = scenario_doc(trace, model=model, cache={"num_gpu_blocks": 4000, "checkpoint": checkpoint})
    fast = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    doc["simulation"] = {"exact_steps": True}
    exact = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert fast.summary["finished"] == 12
    assert fast.requests_csv() == exact.requests_csv()


def test_every_question_after_the_first_resumes_inside_its_document(tmp_path):
    """Documents of 6 units and one question unit each, checkpoints every 128 tokens: the first
    question of a document computes all 448 tokens; the later ones resume at 384 (the deepest
    checkpoint, after the document's 6th unit)."""
    trace = write_kvsim_trace(tmp_path / "t.jsonl", _rows())
    every = {"num_gpu_blocks": 2000, "checkpoint": {"type": "every", "k": 128}}
    doc = scenario_doc(trace, model="qwen3.5-0.8b", cache=every)
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    hits = [int(r["hit_tokens"]) for r in res.requests]
    assert hits == [0, 0, 0] + [384] * 9


def test_bad_checkpoint_settings_are_one_line_errors(tmp_path):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", _rows(1, 1))
    cases = [
        (dict(cache={"checkpoint": "every"}), "bad parameters"),
        (dict(cache={"checkpoint": {"type": "every", "k": 0}}), "eviction|checkpoint"),
        (dict(cache={"checkpoint": "evry"}), "did you mean 'every'"),
        (dict(model="llama-3.1-8b", cache={"checkpoint": "sqrt"}), "needs a model with recurrent"),
        (dict(cache={"layout": "msa"}), "use contiguous"),
        (dict(model="llama-3.1-8b", cache={"isolation": 5}), r"cache.isolation: 5 applies"),
        (
            dict(model="llama-3.1-8b", cache={"checkpoint_capture": "scan"}),
            "cache.checkpoint_capture: 'scan' applies",
        ),
        (dict(cache={"checkpoint_capture": "kernel"}), "checkpoint_capture"),
    ]
    for over, msg in cases:
        doc = scenario_doc(trace, **{"model": "qwen3.5-0.8b", **over})
        with pytest.raises(KvsimError, match=msg):
            simulate(scenario_from_dict(doc, base_dir=tmp_path))


def test_checkpoint_registry_checks_the_interface():
    with pytest.raises(KvsimError, match="does not implement the checkpoint interface"):
        CHECKPOINT.resolve("kvsim.simulator.policies.eviction:LRU")


def test_hybrid_configs_from_hugging_face(tmp_path):
    """A Nemotron-H and a Qwen3.5 config.json read as the catalog's (the catalog entries are the
    same fields)."""
    import yaml

    from kvsim.simulator.catalog import _load

    catalog = _load("models.yaml")
    for name in ("nemotron-h-8b", "qwen3.5-0.8b", "mamba2-2.7b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(catalog[name]["hf_config"]))
        m = get_model(f"{name}.json", tmp_path)
        ref = get_model(name)
        assert (m.state_bytes, m.kv_bytes_per_token, m.attention_layers) == (
            ref.state_bytes, ref.kv_bytes_per_token, ref.attention_layers)  # fmt: skip
    bad = dict(catalog["nemotron-h-8b"]["hf_config"], hybrid_override_pattern="M*X")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(KvsimError, match="hybrid_override_pattern"):
        get_model("bad.json", tmp_path)
    assert yaml  # (imported for the catalog's YAML)


def test_resident_checkpoints_are_integrated_over_time():
    """Stored at 0 s and 10 s, the first dropped at 30 s: 1·10 + 2·20 + 1·10 checkpoint-seconds
    by 40 s; two stored, peak two."""
    from kvsim.simulator.cache.prefix_tree import KeyedHeap, PrefixTree

    tree = PrefixTree(KeyedHeap(lambda n: (n.released,)), True)
    a = tree.insert_state(1, None, 0, 64, SB, 0)
    tree.insert_state(2, None, 0, 64, SB, 10 * 10**9)
    tree.drop(a, 30 * 10**9)
    assert tree.state_seconds(40 * 10**9) == 60.0
    assert (tree.states_stored, tree.states_peak, len(tree.states)) == (2, 2, 1)


def test_summary_reports_the_checkpoints_and_their_memory(tmp_path):
    """Three documents, checkpoints every 128 tokens (3 per document, stored once each): 9
    stored, 9 resident at the end, in decimal GB of Qwen3.5-0.8B states; no block for an
    attention-only model."""
    trace = write_kvsim_trace(tmp_path / "t.jsonl", _rows())
    every = {"num_gpu_blocks": 2000, "checkpoint": {"type": "every", "k": 128}}
    res = simulate(scenario_from_dict(
        scenario_doc(trace, model="qwen3.5-0.8b", cache=every), base_dir=tmp_path))  # fmt: skip
    c = res.summary["checkpoints"]
    state = get_model("qwen3.5-0.8b").state_bytes
    assert (c["stored"], c["resident_end"], c["state_bytes"]) == (9, 9, state)
    assert c["gb_end"] == c["gb_peak"] == 9 * state / 1e9
    assert 0 < c["gb_mean"] < c["gb_end"]  # filled up during the run
    doc = scenario_doc(trace, model="qwen3.5-0.8b", cache={**every, "isolation": 1})
    iso = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    c = iso.summary["checkpoints"]  # every question stores its document's three again
    assert (c["stored"], c["resident_end"], c["gb_end"]) == (36, 3, 3 * state / 1e9)
    plain = simulate(scenario_from_dict(scenario_doc(trace), base_dir=tmp_path))
    assert "checkpoints" not in plain.summary


def test_checkpoint_memory_over_time_is_the_same_fast_or_exact(tmp_path):
    """Decode runs that need blocks evict stored checkpoints: they must go at the iteration
    that needed the blocks, not at the end of a fast-forwarded run, or the memory integral
    (``checkpoints.gb_mean``) differs from exact stepping's."""
    rows = [{"arrival_s": 0.01 * i, "prompt_tokens": 6 * UNIT + 5, "output_tokens": 300,
             "blocks": [100 * i + u for u in range(7)], "unit_tokens": UNIT}
            for i in range(6)]  # fmt: skip
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    cache = {"num_gpu_blocks": 1500, "checkpoint": {"type": "every", "k": 64}}
    doc = scenario_doc(trace, model="qwen3.5-0.8b", cache=cache)
    fast = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    doc["simulation"] = {"exact_steps": True}
    exact = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert fast.summary["evictions"] > 0 and fast.summary["checkpoints"]["stored"] > 0
    assert fast.summary["checkpoints"] == exact.summary["checkpoints"]
