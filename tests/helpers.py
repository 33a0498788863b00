"""Helpers for tests: the shared public traces and small scenario builders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = ROOT.parent / "shared" / "traces"


def shared_trace(name: str) -> Path:
    """A public trace from ../shared/traces; skip with a reason where that folder is absent."""
    path = SHARED_TRACES / name
    if not path.is_file():
        pytest.skip(f"{path} not present (public traces live in ../shared/traces)")
    return path


def load_hypothesis_profile() -> None:
    """The "kvsim" hypothesis profile: no deadline, ``KVSIM_HYPOTHESIS_EXAMPLES`` examples (60 by
    default)."""
    settings.register_profile(
        "kvsim",
        deadline=None,
        max_examples=int(os.environ.get("KVSIM_HYPOTHESIS_EXAMPLES", "60")),
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    settings.load_profile("kvsim")


def write_kvsim_trace(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def scenario_doc(trace: Path | str, fmt: str = "kvsim", **overrides) -> dict:
    """A one-replica Llama-3.1-8B / H100 scenario over a trace file, with overrides by section."""
    doc = {
        "name": "test",
        "model": "llama-3.1-8b",
        "hardware": "h100-sxm",
        "cluster": {"replicas": 1, "tensor_parallel": 1},
        "cache": {"block_size": 16, "num_gpu_blocks": 4096},
        "scheduler": {"max_num_batched_tokens": 512, "max_num_seqs": 16},
        "routing": "least_loaded",
        "workload": {"type": "trace", "path": str(trace), "format": fmt},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(section), dict):
            doc[section] = {**doc[section], **value}
        else:
            doc[section] = value
    return doc


class OldestFootprint:
    """A time-dependent eviction policy that owns its candidates (for tests): evict the node with
    the largest (now − last use) × blocks, deepest first among equals. Which node that is depends
    on the clock when blocks differ, so evictions must happen at exact iteration boundaries."""

    time_dependent = True

    def __init__(self, context):
        self.cands: dict[int, object] = {}

    def add(self, node, now_ns):
        self.cands[id(node)] = node

    def remove(self, node):
        del self.cands[id(node)]

    def pop(self, now_ns):
        if not self.cands:
            return None
        node = max(
            self.cands.values(),
            key=lambda n: ((now_ns - n.last_access_ns) * n.blocks, n.depth, n.id),
        )
        return self.cands.pop(id(node))


class HalfRaw:
    """A user's transfer codec (for tests): half the raw KV bytes, no codec work."""

    def __init__(self, context):
        from kvsim.simulator.policies.transfer import Quality

        self.quality = Quality(source="none")
        self.bytes_per_token = context.producer.kv_bytes_per_token // 2

    def plan(self, tokens):
        from kvsim.simulator.policies.transfer import TransferPlan

        return TransferPlan(tokens * self.bytes_per_token)


class ShallowestFirst:
    """An eviction policy for tests: the unit nearest the prompt's start first."""

    def __init__(self, context):
        pass

    def key(self, node):
        return (node.depth, node.released)


def wait_for_file(task: tuple[int, str, list]) -> tuple[int, dict, None]:
    """A sweep task for tests: task 0 returns at once; any other waits (up to 20 s) for the file
    named by the task and returns whether it appeared."""
    import time

    index, path, _ = task
    deadline = time.monotonic() + (0 if index == 0 else 20)
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return index, {"saw": b"yes" if Path(path).exists() else b"no"}, None


def plotly_figures(page: str) -> dict[str, tuple[list[dict], dict]]:
    """The charts of an HTML page, read from its ``Plotly.newPlot(id, data, layout)`` calls: by
    div id, the traces (typed arrays — plotly's ``{"dtype", "bdata"}`` — decoded to lists) and
    the layout."""
    import base64
    import re

    import numpy as np

    def decode(value):
        if isinstance(value, dict):
            if set(value) >= {"dtype", "bdata"}:
                raw = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
                return raw.reshape(value["shape"]).tolist() if "shape" in value else raw.tolist()
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    decoder = json.JSONDecoder()
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([\w-]+)",\s*', page):
        data, end = decoder.raw_decode(page, m.end())
        layout = decoder.raw_decode(page, page.index("{", end))[0]
        out[m.group(1)] = (decode(data), decode(layout))
    return out
