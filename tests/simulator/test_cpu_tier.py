"""The CPU tier: GPU evictions demote units, hits there load over PCIe before the prefill that
needs them, its own eviction policy, per-tier hit ratios, and bad settings."""

from __future__ import annotations

import pytest
import simpy
from hand_prices import iteration_ns
from helpers import scenario_doc, write_kvsim_trace

from kvsim.simulator import scenario_from_dict, simulate
from kvsim.simulator.cache.cpu_tier import CpuTier
from kvsim.simulator.cache.prefix_tree import Node
from kvsim.simulator.cluster import Cluster
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.link import Link
from kvsim.simulator.policies import EVICTION

UNIT = 64  # tokens, 4 blocks of 16
BLOCK_BYTES = 16 * 32 * 2 * 8 * 128 * 2  # Llama-3.1-8B: 2 MiB a block


def _rows():
    # r0 caches units 1-3; r1 (other units) pushes 3 then 2 out of the 17-block GPU pool;
    # r2 = units 1-4: unit 1 is on the GPU, 2 and 3 in the CPU tier.
    return [
        {"id": 0, "arrival_s": 0.0, "prompt_tokens": 192, "output_tokens": 2,
         "blocks": [1, 2, 3], "unit_tokens": UNIT},
        {"id": 1, "arrival_s": 1.0, "prompt_tokens": 192, "output_tokens": 2,
         "blocks": [10, 11, 12], "unit_tokens": UNIT},
        {"id": 2, "arrival_s": 2.0, "prompt_tokens": 256, "output_tokens": 1,
         "blocks": [1, 2, 3, 4], "unit_tokens": UNIT},
    ]  # fmt: skip


def _doc(tmp_path, rows, cpu_tier=None, **over):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", rows)
    cache = {"num_gpu_blocks": 17}
    if cpu_tier is not None:
        cache["cpu_tier"] = cpu_tier
    return scenario_doc(trace, cache=cache, **over)


def test_evicted_units_go_to_the_cpu_tier_and_a_hit_loads_them_before_the_prefill(tmp_path):
    tier = {"num_blocks": 64, "pcie_gbit_per_s": 8.0}  # one byte per ns each way
    c = Cluster(scenario_from_dict(_doc(tmp_path, _rows(), tier), base_dir=tmp_path))
    res = c.run()
    cpu = c.replicas[0].scheduler.cache.cpu
    reqs = {int(r["id"]): r for r in res.requests}
    # r1's admission evicted 3 then 2 (leaves, least recently released first). r2's admission
    # took 8 blocks for 2 and 3 (1 was free: 12 and 11 went), its chunk 4 more (10 went). The
    # loaded units left the tier.
    assert list(cpu.tree.nodes) == [12, 11, 10]
    assert (cpu.demotions, cpu.loads, cpu.loaded_blocks) == (5, 1, 8)
    r = reqs[2]
    assert (r["hit_units"], r["cpu_hit_units"], r["hit_tokens"]) == (3, 2, 192)
    load_ns = 8 * BLOCK_BYTES
    ttft = load_ns + iteration_ns([(192, 64)], logits=1)  # then unit 4 at context 192
    assert round(float(r["ttft_s"]) * 1e9) == ttft
    s = res.summary
    assert s["prefix_hit_ratio"] == 3 / 10 and s["cpu_tier"]["hit_ratio_cpu"] == 2 / 10
    assert s["cpu_tier"]["hit_ratio_gpu"] == 1 / 10
    assert s["cpu_tier"]["loaded_bytes"] == load_ns
    assert "prefix hits by tier       GPU 10.0%, CPU 20.0%  (1 loads" in res.table()
    from kvsim.simulator.digest import digest

    d = digest(res)  # the report's chart: r2's 2 CPU hits among its 3, in r2's arrival bin
    assert (d.cpu_hit_units.sum(), d.hit_units.sum(), d.units.sum()) == (2, 3, 10)
    from helpers import plotly_figures

    from kvsim.simulator.report import report_html

    hits, _ = plotly_figures(report_html(res, c.scenario))["kvsim-hits"]
    assert [t["name"] for t in hits] == ["prefix-hit ratio (both tiers)", "GPU", "CPU tier"]
    assert ("prefix hits by tier", "GPU 10.0%, CPU 20.0%  (1 loads, 0.0168 GB over PCIe)") in (
        res.table_rows()
    )
    # Without the tier, r2 finds unit 1 only and recomputes 2 and 3.
    res = simulate(scenario_from_dict(_doc(tmp_path, _rows()), base_dir=tmp_path))
    r = {int(x["id"]): x for x in res.requests}[2]
    assert (r["hit_units"], "cpu_hit_units" in r) == (1, False)


def test_units_held_for_a_load_are_not_evicted_from_the_tier(tmp_path):
    # A tier of two units: when r2's admission evicts r1's units 12 and 11 from the GPU, the
    # tier holds only 2 and 3, which r2 is about to load: 12 and 11 are dropped, not demoted
    # over them. Loaded, 2 and 3 leave; r2's chunk then demotes 10.
    tier = {"num_blocks": 8, "pcie_gbit_per_s": 8.0}
    c = Cluster(scenario_from_dict(_doc(tmp_path, _rows(), tier), base_dir=tmp_path))
    res = c.run()
    cpu = c.replicas[0].scheduler.cache.cpu
    assert res.requests[2]["cpu_hit_units"] == 2
    assert list(cpu.tree.nodes) == [10] and cpu.evictions == 0 and cpu.demotions == 3


def test_a_unit_is_hit_in_the_tier_only_once_its_copy_has_arrived():
    env = simpy.Environment()
    h2d, d2h = Link(env, "h2d", 8.0), Link(env, "d2h", 8.0)
    tier = CpuTier(16, EVICTION.create("lru", None), 100, h2d, d2h)
    node = Node(7, None, 0, 0, 64, 64, 4, 0, 0.0)
    tier.demote(node, 0)
    tier.flush()  # one allocation's demotions go as one copy
    assert tier.match([7], 0, 64, 64) == []  # 400 bytes on the way
    env.run(until=399)
    assert tier.match([7], 0, 64, 64) == []
    env.run(until=401)
    assert [n.id for n in tier.match([7], 0, 64, 64)] == [7]
    # Only at its own depth and size: unit 7 as a prompt's second unit, or as a 32-token last
    # unit, is other content.
    assert tier.match([3, 7], 1, 128, 64) == [] and tier.match([7], 0, 32, 64) == []


@pytest.mark.parametrize("policy, kept", [("lru", [1, 0]), ("helpers:ShallowestFirst", [2, 0])])
def test_the_tier_evicts_by_its_own_policy(policy, kept):
    env = simpy.Environment()
    links = Link(env, "h2d", 8.0), Link(env, "d2h", 8.0)
    tier = CpuTier(8, EVICTION.create(policy, None), 1, *links)
    # Demoted deepest first (as the GPU evicts leaves): depth 2, then 1, then 0.
    for uid, depth in ((2, 2), (1, 1), (0, 0)):
        tier.demote(Node(uid, None, depth, depth * 64, 64, 64, 4, 0, 0.0), 0)
    assert list(tier.tree.nodes) == kept and tier.evictions == 1


BAD = [
    ({"size_gib": 1, "num_blocks": 10}, "give exactly one of size_gib and num_blocks"),
    ({"eviction": "lru"}, "give exactly one of size_gib and num_blocks"),
    ({"num_blocks": 0}, "cache.cpu_tier.num_blocks: 0 is not allowed"),
    ({"num_blocks": 8, "pcie_gbit_per_s": 0}, "cache.cpu_tier.pcie_gbit_per_s: 0 is not allowed"),
    ({"num_blocks": 8, "eviction": "lru2"}, "unknown eviction policy 'lru2'"),
]


@pytest.mark.parametrize("tier, message", BAD)
def test_bad_cpu_tier_settings_are_one_line_errors(tmp_path, tier, message):
    with pytest.raises(KvsimError) as e:
        scenario_from_dict(_doc(tmp_path, _rows(), tier), base_dir=tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_cpu_tier_needs_the_contiguous_layout(tmp_path):
    doc = _doc(tmp_path, _rows(), {"num_blocks": 8})
    doc["cache"]["layout"] = "msa"
    with pytest.raises(KvsimError, match="cache.cpu_tier: a CPU tier needs cache.layout contig"):
        scenario_from_dict(doc, base_dir=tmp_path)


def test_size_in_gib_policy_and_the_default_pcie_rate(tmp_path):
    tier = {"size_gib": 1, "eviction": "helpers:ShallowestFirst"}
    c = Cluster(scenario_from_dict(_doc(tmp_path, _rows(), tier), base_dir=tmp_path))
    pool = c.entry
    key = c.replicas[0].scheduler.cache.cpu.tree.candidates.key
    assert type(key.__self__).__name__ == "ShallowestFirst"
    assert pool.cpu_blocks == (1 << 30) // BLOCK_BYTES == 512
    assert pool.pcie_gbit_per_s == 512 * 0.8  # H100 PCIe Gen5 x16 per direction, 80% reached
