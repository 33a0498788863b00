"""kvsim sweep: grid expansion and Pareto fronts."""

from __future__ import annotations

from pathlib import Path

import yaml

from kvsim.simulator.sweep import load_sweep, pareto_front, staircase

BASE = {
    "name": "tiny",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "cluster": {"replicas": 1},
    "routing": "least_loaded",
    "workload": {
        "type": "synthetic",
        "requests": 40,
        "rate": 20.0,
        "prompt_tokens": {"type": "lognormal", "median": 600, "sigma": 0.5, "min": 16, "max": 4000},
        "output_tokens": {"type": "lognormal", "median": 40, "sigma": 0.5, "min": 1, "max": 200},
        "shared_prefix": {"prefixes": 2, "tokens": 512},
        "unit_tokens": 64,
    },
}
# Four points: a product of two paths (one a mapping), then a second product whose mapping has
# another sub-key and which leaves cluster.replicas alone.
UNION = """\
base: base.yaml
set: {seed: 3}
grid:
  - {scheduler.chunking: [{type: fixed}], cluster.replicas: [1, 2]}
  - {scheduler.chunking: [{type: adaptive, target_s: 0.02}, {type: adaptive, target_s: 0.1}]}
plots:
  - {x: cluster.replicas, y: ttft_s.p99}
  - {x: ttft_s.p99, y: throughput.requests_per_s, series: scheduler.chunking.type,
     kind: pareto, maximize_y: true}
"""


def _write(folder: Path, sweep_text: str, name: str = "s.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    path = folder / name
    path.write_text(sweep_text)
    return path


# ---------------------------------------------------------------- expansion


def test_grid_is_a_product_in_nested_loop_order(tmp_path):
    path = _write(
        tmp_path,
        "base: base.yaml\nset: {seed: 1, workload.rate: 5.0}\n"
        "grid: {cluster.replicas: [1, 2, 4], cache.eviction: [lru, lfu]}\n",
    )
    sweep = load_sweep(path)
    assert sweep.name == "s" and sweep.base == tmp_path / "base.yaml" and sweep.plots is None
    assert [p.index for p in sweep.points] == list(range(6))
    fixed = ("seed=1", "workload.rate=5.0")
    assert [p.overrides for p in sweep.points] == [
        (*fixed, "cluster.replicas=1", "cache.eviction=lru"),
        (*fixed, "cluster.replicas=1", "cache.eviction=lfu"),
        (*fixed, "cluster.replicas=2", "cache.eviction=lru"),
        (*fixed, "cluster.replicas=2", "cache.eviction=lfu"),
        (*fixed, "cluster.replicas=4", "cache.eviction=lru"),
        (*fixed, "cluster.replicas=4", "cache.eviction=lfu"),
    ]
    assert sweep.points[3].values[-2:] == (("cluster.replicas", 2), ("cache.eviction", "lfu"))
    folders = [p.folder for p in sweep.points]
    assert all(
        f.startswith(f"points/{i}-") and len(f) == len(f"points/{i}-") + 8
        for i, f in enumerate(folders)
    )
    assert len(set(folders)) == 6 and folders == [p.folder for p in load_sweep(path).points]


def test_a_list_of_grids_is_the_union_of_their_products_in_order(tmp_path):
    sweep = load_sweep(_write(tmp_path, UNION))
    assert [p.overrides for p in sweep.points] == [
        ("seed=3", "scheduler.chunking={type: fixed}", "cluster.replicas=1"),
        ("seed=3", "scheduler.chunking={type: fixed}", "cluster.replicas=2"),
        ("seed=3", "scheduler.chunking={type: adaptive, target_s: 0.02}"),
        ("seed=3", "scheduler.chunking={type: adaptive, target_s: 0.1}"),
    ]
    assert [(p.x, p.y, p.series, p.kind, p.maximize_y) for p in sweep.plots] == [
        ("cluster.replicas", "ttft_s.p99", None, "curve", False),
        ("ttft_s.p99", "throughput.requests_per_s", "scheduler.chunking.type", "pareto", True),
    ]


def test_values_reach_the_scenario_as_written(tmp_path):
    """Each value goes through its --set text and back unchanged, whatever YAML would make of
    its plain spelling."""
    path = _write(
        tmp_path,
        "base: base.yaml\ngrid:\n  description: ['1e3', 'yes', 'a: b', '', '#x', '07']\n",
    )
    sweep = load_sweep(path)
    from kvsim.simulator import load_scenario

    got = [load_scenario(sweep.base, list(p.overrides)).description for p in sweep.points]
    assert got == ["1e3", "yes", "a: b", "", "#x", "07"]


# ---------------------------------------------------------------- Pareto fronts


def test_pareto_front_by_hand():
    xs = [1, 2, 2, 3, 4, 1, 5, 3, 3]
    ys = [5, 3, 4, 3, 1, 6, 1, 2, 2]
    # (1,6) loses to (1,5); (2,4) and (3,3) to (2,3); (5,1) to (4,1); the two (3,2) tie: both stay.
    assert pareto_front(xs, ys) == [0, 1, 7, 8, 4]
    pts = [(xs[i], ys[i]) for i in [0, 1, 7, 8, 4]]
    assert staircase(pts) == [(1, 5), (2, 5), (2, 3), (3, 3), (3, 2), (4, 2), (4, 1)]
    # Throughput (maximised) against latency (minimised): (2,2) loses to (3,2).
    assert pareto_front([1, 2, 3, 4], [1, 2, 2, 5], maximize_x=True) == [0, 2, 3]
    assert staircase([(1, 1), (3, 2), (4, 5)], maximize_x=True) == [
        (1, 1),
        (1, 2),
        (3, 2),
        (3, 5),
        (4, 5),
    ]
    # Both maximised: (1,3) loses to (2,3).
    assert pareto_front([1, 2, 3], [3, 3, 1], maximize_x=True, maximize_y=True) == [1, 2]
    assert staircase([(2, 3), (3, 1)], maximize_x=True) == [(2, 3), (2, 1), (3, 1)]
    # Minimised x, maximised y: only (1,6) survives, and equal x with a worse y loses.
    assert pareto_front(xs, ys, maximize_y=True) == [5]
    assert pareto_front([2, 2, 1], [1, 3, 0], maximize_y=True) == [2, 1]
    assert pareto_front([], []) == [] and staircase([]) == []
