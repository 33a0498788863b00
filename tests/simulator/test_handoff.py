"""Prefill/decode hand-off: exact timelines priced by hand, who holds which blocks when, who
emits the first token, the record across replicas, and bad pool/link/codec settings."""

from __future__ import annotations

import pytest
from hand_prices import iteration_ns, plain_op_s
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.cluster import Cluster
from kvsim.simulator.errors import KvsimError

# Llama-3.1-8B: KV of one token = 32 layers x 2 x 8 KV heads x 128 x 2 bytes.
KV_TOKEN_BYTES = 32 * 2 * 8 * 128 * 2


def _doc(tmp_path, rows, codec="raw", first_token="producer", decode_blocks=4096, **over):
    """One prefill and one decode replica of Llama-3.1-8B on H100s; a link of 8 Gbit/s (one
    byte per ns) without latency."""
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = scenario_doc(trace, scheduler={"max_num_batched_tokens": 2048, "max_num_seqs": 16})
    del doc["cluster"]
    doc["pools"] = [
        {"role": "prefill", "cache": {"num_gpu_blocks": 4096}},
        {"role": "decode", "cache": {"num_gpu_blocks": decode_blocks}},
    ]
    doc["links"] = [{"producer": "prefill", "consumer": "decode", "bandwidth_gbit_per_s": 8.0}]
    doc["transfer"] = {"codec": codec, "first_token": first_token}
    doc.update(over)
    return doc


def _run(tmp_path, rows, exact=False, **kw):
    doc = _doc(tmp_path, rows, **kw)
    doc["simulation"] = {"exact_steps": exact}
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    return {int(r["id"]): r for r in res.requests}, res


def _ns(x: str) -> int:
    return round(float(x) * 1e9)


@pytest.mark.parametrize("exact", [False, True])
def test_producer_samples_the_first_token_then_the_decode_replica_continues(tmp_path, exact):
    reqs, res = _run(tmp_path, [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 3}],
                     exact)  # fmt: skip
    t1 = iteration_ns([(0, 1000)], logits=1)  # prefill replica: prompt, first token
    payload = 1000 * KV_TOKEN_BYTES
    t2 = t1 + payload  # one byte per ns
    t3 = t2 + iteration_ns([(1000, 1)], logits=1)  # decode replica: token 1's KV, token 2
    t4 = t3 + iteration_ns([(1001, 1)], logits=1)  # token 3
    r = reqs[0]
    assert (_ns(r["first_token_s"]), _ns(r["finish_s"])) == (t1, t4)
    assert (r["prefill_replica"], r["decode_replica"], r["replica"]) == (0, 0, 0)
    assert int(r["payload_bytes"]) == payload == 131_072_000
    assert _ns(r["transfer_s"]) == payload and _ns(r["wait_s"]) == 0
    assert _ns(r["handoff_s"]) == t3 - t1
    assert r["producer_codec_s"] == r["consumer_codec_s"] == 0.0
    assert res.summary["transfer"]["handoffs"] == 1
    assert res.summary["links"]["prefill-decode"]["bytes"] == payload
    assert res.summary["links"]["prefill-decode"]["busy_s"] == payload / 1e9


@pytest.mark.parametrize("exact", [False, True])
def test_consumer_emits_the_first_token_after_the_hand_off(tmp_path, exact):
    reqs, _ = _run(tmp_path, [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 2}],
                   exact, first_token="consumer")  # fmt: skip
    t1 = iteration_ns([(0, 1000)], logits=1)
    t2 = t1 + 1000 * KV_TOKEN_BYTES
    t3 = t2 + iteration_ns([(999, 1)], logits=1)  # the prompt's last token: the first token
    t4 = t3 + iteration_ns([(1000, 1)], logits=1)
    r = reqs[0]
    assert (_ns(r["first_token_s"]), _ns(r["finish_s"])) == (t3, t4)
    assert _ns(r["ttft_s"]) == t3 and _ns(r["handoff_s"]) == t3 - t1


def test_one_token_answers_from_the_producer_never_cross_the_link(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 500, "output_tokens": 1}]
    reqs, res = _run(tmp_path, rows)
    r = reqs[0]
    assert _ns(r["finish_s"]) == iteration_ns([(0, 500)], logits=1)
    assert (r["prefill_replica"], r["decode_replica"], r["payload_bytes"]) == (None, None, None)
    assert res.summary["transfer"]["handoffs"] == 0
    # With the consumer emitting it, the same answer crosses the link.
    _, res = _run(tmp_path, rows, first_token="consumer")
    assert res.summary["transfer"]["handoffs"] == 1


def test_producer_holds_and_consumer_reserves_blocks_during_the_transfer(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 3}]
    c = Cluster(scenario_from_dict(_doc(tmp_path, rows), base_dir=tmp_path))
    prefill, decode = c.entry.replicas[0].scheduler, c.decode.replicas[0].scheduler
    t1 = iteration_ns([(0, 1000)], logits=1)
    t2 = t1 + 1000 * KV_TOKEN_BYTES
    c._next_arrival()
    c.env.run(until=t1 + 1)  # the transfer is on the link
    assert prefill.cache.free == 4096 - 63  # ceil(1000 / 16): the prompt, held
    assert decode.cache.free == 4096 - 63  # ceil(1001 / 16): prompt + token 1, reserved
    assert list(prefill.outgoing) and list(decode.incoming) == [0]
    for s in (prefill, decode):
        s.check_invariants()
    c.env.run(until=t2 + 1)  # arrived: the prefill replica gave everything back
    assert prefill.cache.free == 4096 and not prefill.outgoing
    assert decode.cache.free == 4096 - 63 and not decode.incoming
    decode.check_invariants()


@pytest.mark.parametrize("exact", [False, True])
def test_a_hand_off_waits_for_the_decode_replica_to_free_blocks(tmp_path, exact):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 2}] * 2
    rows = [{**r, "id": i} for i, r in enumerate(rows)]
    reqs, _ = _run(tmp_path, rows, exact, decode_blocks=70)  # room for one at a time
    t1 = iteration_ns([(0, 1000), (0, 1000)], logits=2)  # both prompts in one iteration
    t2 = t1 + 1000 * KV_TOKEN_BYTES
    t3 = t2 + iteration_ns([(1000, 1)], logits=1)  # request 0 done, its blocks freed
    t4 = t3 + 1000 * KV_TOKEN_BYTES  # request 1's transfer starts only then
    t5 = t4 + iteration_ns([(1000, 1)], logits=1)
    assert _ns(reqs[0]["finish_s"]) == t3 and _ns(reqs[0]["wait_s"]) == 0
    assert _ns(reqs[1]["wait_s"]) == t3 - t1
    # The transfer's time starts when it is sent, not when the prefill ended.
    assert [_ns(reqs[i]["transfer_s"]) for i in (0, 1)] == [t2 - t1, t4 - t3]
    assert _ns(reqs[1]["finish_s"]) == t5


def test_two_transfers_share_the_link(tmp_path):
    # Two prefill replicas, one shared link: both payloads go at once at half the rate each.
    rows = [{"id": i, "arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 2} for i in (0, 1)]
    doc = _doc(tmp_path, rows)
    doc["pools"][0]["replicas"] = 2
    doc["links"][0]["scope"] = "shared"
    doc["routing"] = "round_robin"
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    reqs = {int(r["id"]): r for r in res.requests}
    payload = 1000 * KV_TOKEN_BYTES
    assert [reqs[i]["prefill_replica"] for i in (0, 1)] == [0, 1]
    assert [_ns(reqs[i]["transfer_s"]) for i in (0, 1)] == [2 * payload, 2 * payload]
    link = res.summary["links"]["prefill-decode"]
    assert link["instances"] == 1 and link["busy_s"] == 2 * payload / 1e9


def test_consumer_prefill_sends_token_ids_and_prefills_on_the_decode_replica(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 2}]
    reqs, _ = _run(tmp_path, rows, codec="consumer_prefill")
    t1 = iteration_ns([(0, 1000)], logits=1)
    t2 = t1 + 4 * 1000  # int32 token ids at one byte per ns
    t3 = t2 + iteration_ns([(0, 1001)], logits=1)  # prompt and token 1, sampling token 2
    r = reqs[0]
    assert int(r["payload_bytes"]) == 4000
    assert (_ns(r["first_token_s"]), _ns(r["finish_s"])) == (t1, t3)


def _scd_ops_s(tokens: int, reuse_layers: int, patch_layers: int, rk, rv, rh) -> tuple:
    """Producer and consumer seconds of SCD on Llama-3.1-8B, from the matmul shapes: encode
    codes = X (T x d) @ E (d x r), reuse X' = C (T x r) @ D (r x d) for K and V (d = 8 x 128);
    patch: codes (T x rh) -> hidden (4096) -> K and V (2 x 1024), in bf16."""
    d, h, b = 8 * 128, 4096, 2

    def mm(m, k, n, count=1.0):  # one (m x k) @ (k x n) as its own kernel
        return count * plain_op_s(2 * m * k * n, b * (m * k + k * n + m * n))

    # K and V at ranks rk and rv: half an op over both tensors at each rank.
    enc = mm(tokens, 2 * d, rk, reuse_layers / 2) + mm(tokens, 2 * d, rv, reuse_layers / 2)
    enc += mm(tokens, h, rh, patch_layers)
    reuse = mm(tokens, rk, 2 * d, reuse_layers / 2) + mm(tokens, rv, 2 * d, reuse_layers / 2)
    patch = patch_layers * plain_op_s(
        2 * tokens * (rh * h + h * 2 * d), b * (tokens * rh + rh * h + h * 2 * d + tokens * 2 * d)
    )
    return enc, reuse + patch


@pytest.mark.parametrize(
    "pipelining, gbit, hidden",
    [(False, 8.0, "none"), (True, 8.0, "all but the last layer"), (True, 8000.0, "part")],
)
def test_scd_codec_work_runs_in_the_iterations_at_both_ends(tmp_path, pipelining, gbit, hidden):
    codec = {"type": "scd", "rank_k": 64, "rank_v": 128, "rank_h": 256, "patch_layers": 4}
    rows = [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 2}]
    doc = _doc(tmp_path, rows, codec=codec, first_token="consumer")
    doc["transfer"]["pipelining"] = pipelining
    doc["links"][0]["bandwidth_gbit_per_s"] = gbit
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    r = res.requests[0]
    produce_s, consume_s = _scd_ops_s(1000, 28, 4, 64, 128, 256)
    payload = 1000 * 2 * (28 * (64 + 128) + 4 * 256)
    transfer_ns = payload * 8 / gbit  # whole ns here
    t1 = iteration_ns([(0, 1000)], logits=1, extra_s=produce_s)
    t2 = t1 + round(transfer_ns)
    share = 1.0
    if pipelining:  # layer-wise: the share of the consumer's work left after the last layer
        share = max(1 / 32, 1 - (transfer_ns / 1e9) / consume_s * 31 / 32)
    assert {"none": share == 1, "all but the last layer": share == 1 / 32,
            "part": 1 / 32 < share < 1}[hidden]  # fmt: skip
    t3 = t2 + iteration_ns([(999, 1)], logits=1, extra_s=consume_s * share)
    assert int(r["payload_bytes"]) == payload
    assert _ns(r["producer_codec_s"]) == round(produce_s * 1e9)
    assert _ns(r["consumer_codec_s"]) == round(consume_s * share * 1e9)
    assert _ns(r["first_token_s"]) == t3


def test_decode_replica_is_chosen_when_the_prefill_finishes(tmp_path):
    # Two decode replicas, least loaded: the second hand-off goes where the first did not.
    rows = [{"id": i, "arrival_s": 0.01 * i, "prompt_tokens": 300, "output_tokens": 50}
            for i in range(2)]  # fmt: skip
    doc = _doc(tmp_path, rows)
    doc["pools"][1]["replicas"] = 2
    doc["pools"][0]["scheduler"] = {"max_num_batched_tokens": 2048, "max_num_seqs": 1}
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert [r["decode_replica"] for r in res.requests] == [0, 1]
    # Each request's queueing delay is its prefill replica's: request 1 waits for request 0's
    # prefill (one sequence at a time there), then is admitted at once when that ends.
    a, b = res.requests
    t1 = iteration_ns([(0, 300)], logits=1)
    assert a["queue_s"] == 0.0 and round(b["queue_s"] * 1e9) == t1 - 10_000_000
    per = res.summary["replicas"]
    assert [(p["pool"], p["replica"], p["requests"], p["routed"]) for p in per] == [
        ("prefill", 0, 2, 2), ("decode", 0, 1, 1), ("decode", 1, 1, 1)
    ]  # fmt: skip


BAD = [
    ({"pools": [{"role": "prefill"}]}, "pools: roles ['prefill'] are not allowed"),
    ({"pools": [{"role": "unified"}], "cluster": {"replicas": 2}},
     "cluster: give either cluster: (one unified pool) or pools:, not both"),
    ({"links": []}, "links: the pools prefill -> decode need exactly one link"),
    ({"links": [{"producer": "prefill", "consumer": "dec", "bandwidth_gbit_per_s": 1}]},
     "links.0.consumer: no pool named 'dec'; allowed: prefill, decode"),
    ({"links": [{"producer": "decode", "consumer": "prefill", "bandwidth_gbit_per_s": 1}]},
     "links.0: decode -> prefill is not allowed"),
    ({"links": [{"producer": "prefill", "consumer": "decode", "bandwidth_gbit_per_s": 0}]},
     "links.0.bandwidth_gbit_per_s: 0 is not allowed"),
    ({"transfer": {"codec": "sdc"}}, "unknown transfer policy 'sdc'"),
    ({"transfer": {"codec": {"type": "scd", "rank_k": 64, "rank_v": 64}}},
     "transfer codec 'scd': rank_h = None; allowed: an integer in [1, 4096]"),
    ({"transfer": {"codec": {"type": "quantized", "bits": 3}}},
     "transfer codec 'quantized': bits = 3; allowed: 2, 4, 8"),
    ({"transfer": {"codec": {"type": "raw", "quality": {"f1_vs_oracle": 0.9}}}},
     "transfer codec 'raw': quality needs a source"),
    ({"transfer": {"first_token": "both"}}, "transfer.first_token: 'both' is not allowed"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", BAD)
def test_bad_pool_link_and_codec_settings_are_one_line_errors(tmp_path, change, message):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 2}]
    doc = {**_doc(tmp_path, rows), **change}
    with pytest.raises(KvsimError) as e:
        simulate(scenario_from_dict(doc, base_dir=tmp_path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_kv_transfer_between_different_architectures_is_an_error(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 2}]
    doc = _doc(tmp_path, rows)
    doc["pools"][1]["model"] = "qwen2.5-7b"
    with pytest.raises(KvsimError, match="differ in architecture .attention layers 32 vs 28."):
        scenario_from_dict(doc, base_dir=tmp_path)
    doc["transfer"]["codec"] = "consumer_prefill"  # token ids: any consumer will do
    assert simulate(scenario_from_dict(doc, base_dir=tmp_path)).summary["finished"] == 1


def test_pools_and_links_are_addressed_by_name_in_overrides(tmp_path):
    rows = [{"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 2}]
    doc = _doc(tmp_path, rows)
    s = scenario_from_dict(doc, base_dir=tmp_path,
                           overrides=["pools.decode.replicas=3", "links.0.latency_s=0.5",
                                      "links.prefill-decode.bandwidth_gbit_per_s=50"])  # fmt: skip
    assert s.pools[1].replicas == 3 and s.links[0].latency_s == 0.5
    assert s.links[0].bandwidth_gbit_per_s == 50
    with pytest.raises(KvsimError, match=r"pools has no item 'nope'; allowed: an index below 2 "
                                         r"or a name \(prefill, decode\)"):  # fmt: skip
        scenario_from_dict(doc, base_dir=tmp_path, overrides=["pools.nope.replicas=2"])


def test_link_utilisation_over_time_reaches_the_report(tmp_path):
    from kvsim.simulator.report import report_html

    rows = [{"id": i, "arrival_s": 0.5 * i, "prompt_tokens": 1000, "output_tokens": 2}
            for i in range(3)]  # fmt: skip
    scenario = scenario_from_dict(_doc(tmp_path, rows), base_dir=tmp_path)
    res = simulate(scenario)
    ((starts, busy),) = res.link_series.values()
    width_s = starts[1] - starts[0]
    # The binned busy time adds up to the link's busy time: three transfers of 131 ms each.
    assert sum(busy) * width_s == pytest.approx(res.summary["links"]["prefill-decode"]["busy_s"])
    assert res.summary["links"]["prefill-decode"]["busy_s"] == 3 * 1000 * KV_TOKEN_BYTES / 1e9
    page = report_html(res, scenario)
    assert "Link use over time" in page and '"name":"prefill-decode"' in page
    # Per-replica KV lines are named by pool; the hand-off's delay has its CDF.
    assert '"name":"prefill 0"' in page and '"name":"decode 0"' in page
    assert "Hand-off (CDF)" in page
    # The scenario at the top: each pool's rows, then the link and the codec.
    from kvsim.simulator.report import scenario_rows

    rows = dict(scenario_rows(scenario, res.summary))
    assert (
        rows["prefill pool: cluster"]
        == rows["decode pool: cluster"]
        == ("1 replica × TP1 = 1 GPUs; 4096 KV blocks of 16 tokens per replica")
    )
    assert rows["decode pool: GPU"].startswith("h100-sxm (79.19 GiB")
    assert rows["transfer"] == "codec raw, first token on the producer"
    assert rows["link prefill-decode"].startswith("{producer: prefill, consumer: decode, ")


@pytest.mark.parametrize("exact", [False, True])
def test_a_decode_replica_full_of_arrived_kv_admits_after_preempting_all_it_ran(tmp_path, exact):
    """Eight decode blocks, one sequence at a time there (the pool's own scheduler setting): A
    decodes in 4 blocks, B's KV arrives into the other 4 and waits for the seat. When A needs a
    fifth block it is preempted; nothing runs, so B is admitted at once (the replica must not go
    idle with B and A queued), then A is recomputed."""
    rows = [
        {"id": 0, "arrival_s": 0.0, "prompt_tokens": 60, "output_tokens": 50},
        {"id": 1, "arrival_s": 0.005, "prompt_tokens": 60, "output_tokens": 2},
    ]
    doc = _doc(tmp_path, rows, decode_blocks=8)
    doc["pools"][1]["scheduler"] = {"max_num_seqs": 1}
    doc["simulation"] = {"exact_steps": exact}
    res = simulate(scenario_from_dict(doc, base_dir=tmp_path))
    a, b = res.requests
    assert (a["status"], b["status"]) == ("done", "done")
    assert (a["preemptions"], b["preemptions"]) == (1, 0)
    assert float(b["finish_s"]) < float(a["finish_s"])
    assert res.summary["pools"]["decode"]["kv_blocks_per_replica"] == 8


def test_the_shipped_scd_scenario_and_its_bandwidth_sweep():
    from helpers import ROOT

    from kvsim.simulator import load_scenario
    from kvsim.simulator.sweep import load_sweep

    s = load_scenario(ROOT / "scenarios" / "scd_bandwidth.yaml", ["workload.requests=3"])
    res = simulate(s)
    t = res.summary["transfer"]
    assert t["label"] == "scd(rank_k=128, rank_v=128, rank_h=512, patch_layers=6)"
    assert (t["handoffs"], t["first_token"], t["quality"]["f1_vs_oracle"]) == (3, "consumer", 0.95)
    pools = res.summary["pools"]
    assert (pools["prefill"]["model"], pools["decode"]["model"]) == ("mistrallite",
                                                                     "mistral-7b-v0.1")  # fmt: skip
    # 900 tokens: 26 Reuse layers x (128 + 128) + 6 Patch layers x 512, two bytes each.
    assert t["payload_bytes_mean"] == 900 * 2 * (26 * 256 + 6 * 512)
    sweep = load_sweep(ROOT / "scenarios" / "sweeps" / "scd_bandwidth.yaml")
    assert len(sweep.points) == 11 * 6  # bandwidths x codecs


@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_pool_settings_exit_2_with_one_line_through_the_cli(tmp_path, capsys, command):
    import yaml

    from kvsim.simulator.cli import main

    rows = [{"arrival_s": 0.0, "prompt_tokens": 100, "output_tokens": 2}]
    doc = _doc(tmp_path, rows)
    doc["links"][0]["scope"] = "everyone"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    argv = [command, str(path)] + (["--out", str(out), "--no-progress"] if command == "run" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsim: error: ") and err.count("\n") == 1
    assert "links.0.scope: 'everyone' is not allowed" in err
    assert not out.exists()


def test_the_record_keeps_the_prefill_replicas_hits_and_the_decode_replicas_outcome(tmp_path):
    # Two prompts share their first two units (64 tokens each): the second hits them on the
    # prefill replica, and its row says so after the decode replica finished it.
    rows = [
        {"id": 0, "arrival_s": 0.0, "prompt_tokens": 192, "output_tokens": 3,
         "blocks": [1, 2, 3], "unit_tokens": 64},
        {"id": 1, "arrival_s": 1.0, "prompt_tokens": 192, "output_tokens": 3,
         "blocks": [1, 2, 4], "unit_tokens": 64},
    ]  # fmt: skip
    reqs, res = _run(tmp_path, rows)
    assert (reqs[0]["hit_units"], reqs[1]["hit_units"], reqs[1]["hit_tokens"]) == (0, 2, 128)
    assert reqs[1]["decode_replica"] == 0 and reqs[1]["status"] == "done"
    assert res.summary["prefix_hit_ratio"] == 2 / 6


def test_each_pool_has_its_own_gpu_kv_dtype_and_max_model_len(tmp_path):
    """A decode pool on a user's GPU (a hardware file), storing fp8 KV, with a max_model_len of
    1,500 tokens: the request of 1,600 is dropped with that reason, the other's raw KV crosses
    the link in the prefill pool's bf16, and each pool reports its own GPU."""
    import yaml

    hw = tmp_path / "gpus.yaml"
    hw.write_text(yaml.safe_dump({"h100-94g": {"base": "h100-sxm", "memory_gib": 93.0,
                                               "source": "a test"}}))  # fmt: skip
    rows = [{"arrival_s": 0.0, "prompt_tokens": 1000, "output_tokens": 2},
            {"arrival_s": 0.1, "prompt_tokens": 1000, "output_tokens": 600}]  # fmt: skip
    doc = _doc(tmp_path, rows)
    doc["pools"][1].update(
        hardware="h100-94g",
        cache={"num_gpu_blocks": "auto", "kv_cache_dtype": "fp8"},
        scheduler={"max_num_batched_tokens": 2048, "max_num_seqs": 16, "max_model_len": 1500},
    )
    scenario = scenario_from_dict(doc, base_dir=tmp_path, hardware_files=(hw,))
    c = Cluster(scenario)
    prefill, decode = c.pools
    assert (prefill.gpu.name, decode.gpu.name) == ("h100-sxm", "h100-94g")
    assert (prefill.model.kv_element_bytes, decode.model.kv_element_bytes) == (2, 1)
    res = c.run()
    reqs = {r["id"]: r for r in res.requests}
    assert reqs[0]["status"] == "done" and reqs[0]["payload_bytes"] == 1000 * KV_TOKEN_BYTES
    assert reqs[1]["status"] == "dropped: longer than max_model_len (1500 tokens)"
    assert res.summary["hardware_file"] == str(hw)
    assert res.summary["pools"]["decode"]["hardware"] == "h100-94g"
    # fp8 halves the page: the decode pool holds more blocks than a bf16 one on the same GPU
    bf16 = dict(
        doc, pools=[doc["pools"][0], {**doc["pools"][1], "cache": {"num_gpu_blocks": "auto"}}]
    )
    plain = Cluster(scenario_from_dict(bf16, base_dir=tmp_path, hardware_files=(hw,)))
    assert decode.capacity > 1.9 * plain.pools[1].capacity


def test_a_pools_max_model_len_beyond_its_models_context_is_one_line(tmp_path):
    doc = _doc(tmp_path, [{"arrival_s": 0.0, "prompt_tokens": 10, "output_tokens": 2}])
    doc["pools"][1]["scheduler"] = {"max_model_len": 10**6}
    with pytest.raises(KvsimError, match=r"pools\.decode\.scheduler\.max_model_len: 1000000 "
                                         r"exceeds llama-3\.1-8b's context"):  # fmt: skip
        scenario_from_dict(doc, base_dir=tmp_path)
