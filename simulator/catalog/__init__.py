"""Catalogs of model architectures and GPUs, each figure with its source.

A model is named by its catalog key or by the path of a Hugging Face ``config.json``. A model is a
stack of decoder layers described by *kind* (DESIGN §9, S3): attention layers (grouped-query
attention, or DeepSeek's multi-head latent attention), recurrent layers (SSM / linear attention,
with a fixed-size state per sequence), dense gated MLPs and mixture-of-experts MLPs. Cost is
additive over these components, so a model records how many layers of each it has; a Llama layer
is one attention component plus one dense MLP component, a Nemotron-H layer is one of them alone.
KV bytes count attention layers only; weights count every expert; FLOPs count the active ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from ..errors import KvsimError


@dataclass(frozen=True)
class AttentionSpec:
    """The attention layers of a model (identical shapes).

    ``kv_lora_rank`` > 0 means multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 §2.1):
    the cache holds one latent of ``kv_lora_rank + rope_dim`` elements per token and layer, shared
    by all heads, instead of per-head keys and values."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int  # query/key dimension per head (MLA: nope + rope)
    v_head_dim: int
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    rope_dim: int = 0

    @property
    def is_latent(self) -> bool:
        return self.kv_lora_rank > 0

    def kv_dim(self, tp: int = 1) -> int:
        """KV-cache elements per token per layer on one tensor-parallel rank."""
        if self.is_latent:  # the latent is replicated on every rank (vLLM's MLA backend)
            return self.kv_lora_rank + self.rope_dim
        return max(1, self.kv_heads // tp) * (self.head_dim + self.v_head_dim)

    def weights(self, hidden: int) -> int:
        h, d, dv = self.heads, self.head_dim, self.v_head_dim
        if self.is_latent:
            r, rope, nope = self.kv_lora_rank, self.rope_dim, self.head_dim - self.rope_dim
            q = hidden * h * d if not self.q_lora_rank else self.q_lora_rank * (hidden + h * d)
            return q + hidden * (r + rope) + r * h * (nope + dv) + h * dv * hidden
        return hidden * (h * d + self.kv_heads * (d + dv)) + h * dv * hidden


@dataclass(frozen=True)
class MlpSpec:
    """Dense MLP layers: gated (SwiGLU: gate and up projections, then down) or not (one up
    projection and an activation, e.g. Nemotron-H's squared ReLU)."""

    layers: int
    intermediate: int
    gated: bool = True

    def weights(self, hidden: int) -> int:
        return (3 if self.gated else 2) * hidden * self.intermediate


@dataclass(frozen=True)
class MoeSpec:
    """Mixture-of-experts MLP layers: ``experts`` routed experts of which ``top_k`` run per token,
    plus always-active shared experts of ``shared_intermediate`` in all."""

    layers: int
    experts: int
    top_k: int
    intermediate: int  # per routed expert
    shared_intermediate: int = 0

    def weights(self, hidden: int) -> int:
        routed = self.experts * 3 * hidden * self.intermediate
        return routed + 3 * hidden * self.shared_intermediate + hidden * self.experts

    def active_weights(self, hidden: int) -> int:
        return self.top_k * 3 * hidden * self.intermediate + 3 * hidden * self.shared_intermediate


@dataclass(frozen=True)
class RecurrentSpec:
    """Recurrent layers (Mamba-2 SSM, arXiv 2405.21060; or Gated DeltaNet linear attention,
    arXiv 2412.06464): per sequence a state of ``heads × head_dim × state_dim`` fp32 values plus
    the causal convolution's last ``conv_kernel − 1`` inputs, independent of the context length.

    Mamba-2: heads × head_dim is d_inner, state_dim the SSM state size, ``groups`` the B/C groups;
    the input projection makes x, z (2·d_inner), B, C (2·groups·state) and dt (heads).
    Gated DeltaNet: heads are the value heads (head_dim the value dim), state_dim the key dim,
    ``groups`` the key heads; the input projection makes q, k (2·groups·state), v, z
    (2·heads·head_dim) and the gates a, b (2·heads)."""

    layers: int
    kind: str  # "mamba2" | "gdn"
    heads: int
    head_dim: int
    state_dim: int
    groups: int = 1
    conv_kernel: int = 4
    conv_dim: int = 0  # channels of the causal convolution (its window is part of the state)
    in_proj: int = 0  # output width of the input projection
    state_dtype_bytes: int = 4

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    def state_bytes(self, dtype_bytes: int) -> int:
        """Bytes of one sequence's recurrent state over all recurrent layers."""
        ssm = self.heads * self.head_dim * self.state_dim * self.state_dtype_bytes
        conv = self.conv_dim * (self.conv_kernel - 1) * dtype_bytes
        return self.layers * (ssm + conv)

    def weights(self, hidden: int) -> int:
        return hidden * self.in_proj + self.inner * hidden + self.conv_dim * self.conv_kernel


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only model's shape, as far as serving cost depends on it."""

    name: str
    params: float  # every parameter, every expert
    layers: int  # decoder layers
    hidden: int
    vocab: int
    max_position: int
    attention: AttentionSpec | None = None
    mlp: MlpSpec | None = None
    moe: MoeSpec | None = None
    recurrent: RecurrentSpec | None = None
    dtype_bytes: int = 2
    kv_dtype_bytes: int | None = None
    """Bytes of a cached KV element; None: the model's dtype (1: an fp8 KV cache)."""
    tie_embeddings: bool = False
    source: str = ""
    sources: dict = field(default_factory=dict, compare=False)

    # ---- shorthands used by the op vocabulary and calibration grids --------------------------
    @property
    def heads(self) -> int:
        return self.attention.heads if self.attention else 0

    @property
    def kv_heads(self) -> int:
        return self.attention.kv_heads if self.attention else 0

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim if self.attention else 0

    @property
    def intermediate(self) -> int:
        return self.mlp.intermediate if self.mlp else 0

    @property
    def attention_layers(self) -> int:
        return self.attention.layers if self.attention else 0

    def kv_dim(self, tp: int = 1) -> int:
        """KV-cache elements per token per attention layer on one rank."""
        return self.attention.kv_dim(tp) if self.attention else 0

    @property
    def kv_element_bytes(self) -> int:
        """Bytes of one cached KV element (the KV cache's dtype)."""
        return self.dtype_bytes if self.kv_dtype_bytes is None else self.kv_dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes of one token over all attention layers (one rank, TP 1)."""
        return self.attention_layers * self.kv_dim(1) * self.kv_element_bytes

    def kv_bytes_per_token_rank(self, tp: int) -> int:
        """KV-cache bytes of one token over all attention layers on one tensor-parallel rank."""
        return self.attention_layers * self.kv_dim(tp) * self.kv_element_bytes

    @property
    def state_bytes(self) -> int:
        """Recurrent-state bytes of one sequence (0 for pure attention models)."""
        return self.recurrent.state_bytes(self.dtype_bytes) if self.recurrent else 0

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def active_params(self) -> float:
        """Parameters one token runs through (routed experts counted top_k times)."""
        if not self.moe:
            return self.params
        idle = self.moe.layers * (
            self.moe.weights(self.hidden) - self.moe.active_weights(self.hidden)
        )
        return self.params - idle


def shape_params(m: ModelSpec) -> int:
    """Parameters from a model's shapes: every layer kind, norms and embeddings."""
    h = m.hidden
    total = m.vocab * h * (1 if m.tie_embeddings else 2) + h  # embeddings, LM head, final norm
    for comp in (m.attention, m.mlp, m.moe, m.recurrent):
        if comp is not None:
            total += comp.layers * (comp.weights(h) + h)  # + its pre-norm
    return total


@dataclass(frozen=True)
class GpuSpec:
    """A GPU's datasheet figures and the roofline's measured or sourced efficiencies (every
    figure's source is in ``hardware.yaml``). Link rates are per direction."""

    name: str
    memory_gib: float
    sms: int
    bf16_tflops: float
    hbm_tbyte_per_s: float
    nvlink_gbit_per_s: float
    pcie_gbit_per_s: float
    bandwidth_efficiency: float
    gemm_efficiency: float
    gemm_tile_exponent: float
    gemm_tile_s: float
    gemm_launch_s: float
    attention_prefill_efficiency: float
    attention_decode_efficiency: float
    attention_decode_streams: float
    allreduce_bus_gbyte_per_s: float
    nccl_ring_base_latency_us: tuple
    nccl_ring_hop_latency_us: tuple
    nccl_ll_max_gbyte_per_s: float
    launch_s: float
    step_overhead_s: float
    step_overhead_per_seq_s: float
    nontorch_gib: float
    nontorch_tp_gib: float
    source: str = ""


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML has it (the same constructor: the same values; a test compares
the catalogs both ways), about 8x faster on the catalogs than the pure-Python one."""


def _load(name: str) -> dict:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return yaml.load(text, Loader=_LOADER)


@cache
def model_catalog() -> dict[str, dict]:
    return _load("models.yaml")


@cache
def gpu_catalog() -> dict[str, dict]:
    return {k: v for k, v in _load("hardware.yaml").items() if k != "defaults"}


class _Fields:
    """Typed reads of a config mapping; a bad value is one line naming the file and the field."""

    def __init__(self, cfg: dict, where: str):
        self.cfg, self.where = cfg, where

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        if key not in self.cfg and default is None:
            raise KvsimError(f"{self.where}: lacks field {key!r}")
        value = self.cfg.get(key)
        if value is None and default is not None:
            value = default
        if value is None:
            raise KvsimError(f"{self.where}: field {key!r} is null; expected an integer")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KvsimError(f"{self.where}: field {key!r} is {value!r}; expected an integer")
        if isinstance(value, float) and not value.is_integer():
            raise KvsimError(f"{self.where}: field {key!r} is {value!r}; expected an integer")
        if value < minimum or value > 1 << 40:
            raise KvsimError(
                f"{self.where}: field {key!r} is {value!r}; expected an integer in "
                f"[{minimum}, {1 << 40}]"
            )
        return int(value)


def _attention(f: _Fields, layers: int, hidden: int) -> AttentionSpec:
    heads = f.int("num_attention_heads")
    if f.has("kv_lora_rank"):  # multi-head latent attention (DeepSeek-V2/V3)
        rope, nope = f.int("qk_rope_head_dim"), f.int("qk_nope_head_dim")
        return AttentionSpec(
            layers, heads, heads, nope + rope, f.int("v_head_dim"),
            kv_lora_rank=f.int("kv_lora_rank"),
            q_lora_rank=f.int("q_lora_rank", 0, minimum=0),
            rope_dim=rope,
        )  # fmt: skip
    kv = f.int("num_key_value_heads", heads)
    head_dim = f.int("head_dim", hidden // heads)
    if heads % kv:
        raise KvsimError(
            f"{f.where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
        )
    return AttentionSpec(layers, heads, kv, head_dim, head_dim)


def _moe_layers(f: _Fields, layers: int) -> int:
    """How many of ``layers`` decoder layers have a mixture-of-experts MLP."""
    cfg = f.cfg
    if f.has("first_k_dense_replace"):  # DeepSeek: the first k layers are dense
        first, freq = f.int("first_k_dense_replace", minimum=0), f.int("moe_layer_freq", 1)
        return sum(1 for i in range(first, layers) if i % freq == 0)
    step = f.int("decoder_sparse_step", 1)  # Qwen-MoE: every step-th layer, minus mlp_only_layers
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list):
        raise KvsimError(f"{f.where}: field 'mlp_only_layers' must be a list of layer indices")
    return sum(1 for i in range(layers) if (i + 1) % step == 0 and i not in only)


def _mamba2(f: _Fields, layers: int, hidden: int) -> RecurrentSpec:
    """Mamba-2 layers from a Nemotron-H (``mamba_*``) or Mamba2 (``num_heads``…) config."""
    cfg = f.cfg
    if f.has("mamba_num_heads"):
        heads, head_dim = f.int("mamba_num_heads"), f.int("mamba_head_dim")
    else:
        head_dim = f.int("head_dim", 64)
        heads = f.int("num_heads", f.int("expand", 2) * hidden // head_dim)
    state, groups = f.int("ssm_state_size", cfg.get("state_size", 128)), f.int("n_groups", 1)
    inner = heads * head_dim
    return RecurrentSpec(layers, "mamba2", heads, head_dim, state, groups,
                         f.int("conv_kernel", 4), inner + 2 * groups * state,
                         2 * inner + 2 * groups * state + heads)  # fmt: skip


def _gated_deltanet(f: _Fields, layers: int) -> RecurrentSpec:
    """Gated DeltaNet layers from a Qwen3-Next / Qwen3.5 config (``linear_*``)."""
    nk, nv = f.int("linear_num_key_heads"), f.int("linear_num_value_heads")
    dk, dv = f.int("linear_key_head_dim"), f.int("linear_value_head_dim")
    return RecurrentSpec(layers, "gdn", nv, dv, dk, nk, f.int("linear_conv_kernel_dim", 4),
                         2 * nk * dk + nv * dv, 2 * nk * dk + 2 * nv * dv + 2 * nv)  # fmt: skip


def _hybrid_layers(f: _Fields, layers: int) -> tuple[int, int, int] | None:
    """(attention, recurrent, MLP-only) layer counts of a hybrid model, or None if not hybrid.

    Nemotron-H's ``hybrid_override_pattern`` has one character a layer: M (Mamba-2 mixer),
    * (attention), - (MLP). Qwen3-Next/3.5 list ``layer_types`` ("linear_attention" /
    "full_attention") or a ``full_attention_interval``; every layer there has an MLP too."""
    cfg = f.cfg
    pattern = cfg.get("hybrid_override_pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or len(pattern) != layers or set(pattern) - set("M*-"):
            raise KvsimError(f"{f.where}: field 'hybrid_override_pattern' must be {layers} "
                             "characters of M (Mamba), * (attention), - (MLP)")  # fmt: skip
        return pattern.count("*"), pattern.count("M"), pattern.count("-")
    types = cfg.get("layer_types")
    if isinstance(types, list) and "linear_attention" in types:
        if len(types) != layers:
            raise KvsimError(f"{f.where}: field 'layer_types' must list {layers} layers")
        return types.count("full_attention"), types.count("linear_attention"), 0
    if f.has("full_attention_interval") and f.has("linear_num_value_heads"):
        n = f.int("full_attention_interval")
        attn = layers // n
        return attn, layers - attn, 0
    return None


def _hf_config(path: Path) -> ModelSpec:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise KvsimError(f"{path}: cannot read model config.json ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise KvsimError(f"{path}: a model config.json is a JSON object")
    return _from_config(cfg, str(path), str(path))


def _from_config(cfg: dict, where: str, name: str, source: str = "") -> ModelSpec:
    """A model from the fields of a Hugging Face config.json."""
    path = where
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers (Qwen3.5): the LM part
        cfg = {**cfg, **cfg["text_config"]}
    f = _Fields(cfg, where)
    if cfg.get("model_type") == "mamba2" or "Mamba2ForCausalLM" in (cfg.get("architectures") or []):
        return _pure_mamba2(f, name, source or where)
    hidden, layers, vocab = f.int("hidden_size"), f.int("num_hidden_layers"), f.int("vocab_size")
    hybrid = _hybrid_layers(f, layers)
    recurrent = None
    mlp_layers = layers
    if hybrid is not None:
        n_attn, n_rec, n_mlp_only = hybrid
        attention = replace(_attention(f, n_attn, hidden), layers=n_attn) if n_attn else None
        if f.has("hybrid_override_pattern"):
            recurrent = _mamba2(f, n_rec, hidden)
            mlp_layers = n_mlp_only
        else:
            recurrent = _gated_deltanet(f, n_rec)
    else:
        attention = _attention(f, layers, hidden)
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    mlp = moe = None
    if experts:
        experts = f.int(
            next(k for k in ("num_local_experts", "num_experts", "n_routed_experts") if f.has(k))
        )
        expert_inter = f.int("moe_intermediate_size", cfg.get("intermediate_size"))
        shared = 0
        if f.has("shared_expert_intermediate_size"):  # Qwen-MoE: one shared expert
            shared = f.int("shared_expert_intermediate_size", minimum=0)
        elif f.has("n_shared_experts"):  # DeepSeek: n shared experts of the routed size
            shared = f.int("n_shared_experts", minimum=0) * expert_inter
        n_moe = _moe_layers(f, layers)
        moe = MoeSpec(n_moe, experts, f.int("num_experts_per_tok"), expert_inter, shared)
        if moe.top_k > experts:
            raise KvsimError(
                f"{path}: num_experts_per_tok {moe.top_k} exceeds the {experts} experts"
            )
        if n_moe < layers:
            mlp = MlpSpec(layers - n_moe, f.int("intermediate_size"))
    elif mlp_layers:
        gated = cfg.get("mlp_hidden_act", cfg.get("hidden_act")) != "relu2"
        mlp = MlpSpec(mlp_layers, f.int("intermediate_size"), gated)
    spec = ModelSpec(
        name=name,
        params=0.0,
        layers=layers,
        hidden=hidden,
        vocab=vocab,
        max_position=f.int("max_position_embeddings", 131072),
        attention=attention,
        mlp=mlp,
        moe=moe,
        recurrent=recurrent,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        source=source or str(path),
    )
    return _with_params(spec, None)


def _pure_mamba2(f: _Fields, name: str, source: str) -> ModelSpec:
    """A model of Mamba-2 layers only (transformers' Mamba2 config: no attention, no MLP)."""
    hidden = f.int("hidden_size")
    layers = f.int("num_hidden_layers")
    spec = ModelSpec(
        name=name,
        params=0.0,
        layers=layers,
        hidden=hidden,
        vocab=f.int("vocab_size"),
        max_position=f.int("max_position_embeddings", 1 << 20),
        recurrent=_mamba2(f, layers, hidden),
        tie_embeddings=bool(f.cfg.get("tie_word_embeddings", True)),
        source=source,
    )
    return _with_params(spec, None)


def _with_params(spec: ModelSpec, stated: float | None) -> ModelSpec:
    return replace(spec, params=float(stated if stated is not None else shape_params(spec)))


def _catalog_model(key: str, entry: dict) -> ModelSpec:
    """A catalog entry: flat fields for the attention and MLP shape, optional sections; or
    ``hf_config``: the model's Hugging Face config.json fields."""
    e = dict(entry)
    where = f"model catalog entry {key!r}"
    if "hf_config" in e:
        spec = _from_config(e["hf_config"], where, key, str(e.get("source", "")))
        return _with_params(spec, float(e["params"]) if "params" in e else None)
    f = _Fields(e, where)
    layers, hidden = f.int("layers"), f.int("hidden")
    attn = e.get("attention", {})
    fa = _Fields(attn, where + " attention")
    attention = None
    if attn is not None:
        n_attn = fa.int("layers", layers)
        heads = f.int("heads")
        head_dim = f.int("head_dim", hidden // heads)
        attention = AttentionSpec(n_attn, heads, f.int("kv_heads", heads), head_dim, head_dim)
    moe = None
    if "moe" in e:
        m = _Fields(e["moe"], where + " moe")
        moe = MoeSpec(
            m.int("layers", layers), m.int("experts"), m.int("top_k"), m.int("intermediate"),
            m.int("shared_intermediate", 0, minimum=0),
        )  # fmt: skip
    mlp_layers = f.int("mlp_layers", layers - (moe.layers if moe else 0), minimum=0)
    mlp = MlpSpec(mlp_layers, f.int("intermediate")) if mlp_layers else None
    spec = ModelSpec(
        name=key,
        params=0.0,
        layers=layers,
        hidden=hidden,
        vocab=f.int("vocab"),
        max_position=f.int("max_position"),
        attention=attention,
        mlp=mlp,
        moe=moe,
        source=str(e.get("source", "")),
    )
    return _with_params(spec, float(e["params"]) if "params" in e else None)


def get_model(name: str, base_dir: Path | None = None) -> ModelSpec:
    """A catalog model by name, or a model from a Hugging Face config.json path."""
    key = name.lower()
    catalog = model_catalog()
    if key in catalog:
        return _catalog_model(key, catalog[key])
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return _hf_config(path)
    raise KvsimError(
        f"model {name!r} is not in the catalog ({', '.join(catalog)}) nor a config.json path"
    )


KV_CACHE_DTYPES = {"auto": None, "fp8": 1}
"""``cache.kv_cache_dtype`` (vLLM's names): auto keeps the model's dtype, fp8 stores a byte."""


def with_kv_cache_dtype(model: ModelSpec, kv_cache_dtype: str) -> ModelSpec:
    """The model with its KV cache stored as ``kv_cache_dtype``."""
    return replace(model, kv_dtype_bytes=KV_CACHE_DTYPES[kv_cache_dtype])


def get_gpu(name: str, user: dict | None = None) -> GpuSpec:
    """A GPU of the catalog, or of ``user`` (GPUs read from a hardware file), by name."""
    key = name.lower()
    if user and key in user:
        return user[key]
    catalog = gpu_catalog()
    if key not in catalog:
        allowed = ", ".join([*catalog, *(user or {})])
        raise KvsimError(f"hardware {name!r} is not in the catalog; allowed: {allowed}")
    from .hardware import gpu_from_entry

    return gpu_from_entry(key, catalog[key], f"hardware catalog entry {key!r}", GpuSpec)


def read_hardware_file(path: str | Path) -> dict[str, GpuSpec]:
    """The GPUs of a user's hardware file (``--hardware-file``), checked as the catalog's are."""
    from .hardware import read_hardware_file as read

    return read(path, _load("hardware.yaml"), GpuSpec)


def expected_active_experts(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts a batch of ``tokens`` tokens routes to, under uniform
    routing: a token misses a given expert with probability C(E−1, k)/C(E, k) = 1 − k/E, so
    E·(1 − (1 − k/E)^T) experts run (k of them for one token, all E for large batches)."""
    if tokens <= 0:
        return 0.0
    return experts * (1.0 - math.pow(1.0 - top_k / experts, tokens))
