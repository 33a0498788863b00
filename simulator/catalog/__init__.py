"""Catalogs of model architectures and GPUs, each figure with its source.

A model is named by its catalog key or by the path of a Hugging Face ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from ..errors import KvsimError


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, as far as serving cost depends on it."""

    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position: int
    dtype_bytes: int = 2
    source: str = ""

    @property
    def kv_dim(self) -> int:
        """K and V elements per token per layer: 2 · kv_heads · head_dim."""
        return 2 * self.kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes of one token over all layers."""
        return self.layers * self.kv_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes


@dataclass(frozen=True)
class GpuSpec:
    """A GPU's datasheet figures and the roofline's efficiency assumptions."""

    name: str
    memory_gib: float
    bf16_tflops: float
    hbm_tbps: float
    nvlink_gbps: float
    pcie_gbps: float
    flops_efficiency: float
    bandwidth_efficiency: float
    launch_s: float
    step_overhead_s: float
    step_overhead_per_seq_s: float
    allreduce_latency_s: float
    activation_reserve_gib: float
    source: str = ""


def _load(name: str) -> dict:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@cache
def model_catalog() -> dict[str, dict]:
    return _load("models.yaml")


@cache
def gpu_catalog() -> dict[str, dict]:
    return {k: v for k, v in _load("hardware.yaml").items() if k != "defaults"}


def _hf_config(path: Path) -> ModelSpec:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise KvsimError(f"{path}: cannot read model config.json ({e})") from None
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        layers, inter = int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"])
        kv_heads = int(cfg.get("num_key_value_heads", heads))
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        vocab = int(cfg["vocab_size"])
    except KeyError as e:
        raise KvsimError(f"{path}: config.json lacks field {e.args[0]!r}") from None
    # Parameters from the shapes: attention, gated MLP, norms, embeddings (untied unless said).
    attn = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * inter
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return ModelSpec(
        name=str(path),
        params=float(layers * (attn + mlp + 2 * hidden) + embed),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=inter,
        vocab=vocab,
        max_position=int(cfg.get("max_position_embeddings", 131072)),
        source=str(path),
    )


def get_model(name: str, base_dir: Path | None = None) -> ModelSpec:
    """A catalog model by name, or a model from a Hugging Face config.json path."""
    key = name.lower()
    catalog = model_catalog()
    if key in catalog:
        entry = dict(catalog[key])
        entry["params"] = float(entry["params"])
        return ModelSpec(name=key, **entry)
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return _hf_config(path)
    raise KvsimError(
        f"model {name!r} is not in the catalog ({', '.join(catalog)}) nor a config.json path"
    )


def get_gpu(name: str) -> GpuSpec:
    key = name.lower()
    catalog = gpu_catalog()
    if key not in catalog:
        raise KvsimError(f"hardware {name!r} is not in the catalog; allowed: {', '.join(catalog)}")
    entry = {k: (v if k == "source" else float(v)) for k, v in catalog[key].items()}
    return GpuSpec(name=key, **entry)
