"""The scenario: one typed, validated description of a simulation, parsed from YAML.

Field names follow vLLM's engine arguments where they mean the same thing (``block_size``,
``max_num_seqs``, ``max_num_batched_tokens``, ``gpu_memory_utilization``,
``enable_chunked_prefill``). Polymorphic parts carry a ``type:`` discriminator. Unknown keys are
errors with a "did you mean"; every error is one line naming the file, the field, the bad value and
what is allowed. ``--set a.b=c`` overrides edit the raw document before validation, so they are
checked by the same schema.

Types are strict: a boolean is not a number (``block_size: true``), a float is not an integer
(no silent truncation of ``12.5``), numbers are finite (no ``.inf`` or ``.nan``) and within
bounds that keep the simulation's integer nanoseconds and token counts in range. ``name`` is a
name, not a path: it becomes the folder ``runs/<name>``.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kvsim.traces.request import MAX_TOKENS

from .catalog import GpuSpec, get_gpu, get_model, gpu_catalog, read_hardware_file
from .errors import KvsimError, clip, echo, parse_yaml, read_yaml_mapping, yaml_error_line
from .policies import CHECKPOINT, EVICTION, ROUTING, TRANSFER

MAX_COUNT = 2**31 - 1
"""Counts of blocks, sequences, requests: vLLM's limits are int32."""
MAX_NAME_CHARS = 100
_NAME = re.compile(r"[^\W_][\w .+=,@()-]*", re.UNICODE)


def _path_text(v: str) -> str:
    if len(v) > 4096 or any(ord(c) < 32 for c in v):
        raise ValueError("a file path or name: at most 4096 characters, no control characters")
    return v


PathText = Annotated[str, AfterValidator(_path_text)]
"""A string that names a file (or a catalog entry): no NUL or other control characters."""


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_default=True, strict=True, allow_inf_nan=False
    )


def _policy_ref(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


class PolicyRef(BaseModel):
    """A policy by registered name or dotted import path; other keys are its parameters."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


Policy = Annotated[PolicyRef, BeforeValidator(_policy_ref)]


def _policy(registry, v: PolicyRef, info: ValidationInfo, field: str, leading: int) -> PolicyRef:
    """Resolve a policy and check its parameters now, so that ``validate`` refuses what ``run``
    would (the class is checked before anything is instantiated)."""
    search = (info.context or {}).get("policy_path", ())
    try:
        registry.resolve(v.type, search)
        registry.check_params(v.type, v.params, leading)
    except KvsimError as e:
        raise KvsimError(f"{field}: {e}") from None
    return v


class CpuTierConfig(_Strict):
    """A replica's CPU KV pool over PCIe: GPU eviction demotes units to it, a hit there loads them
    back over PCIe before the prefill that needs them (DESIGN §5.1)."""

    size_gib: float | None = Field(None, gt=0, le=1e6, description="host memory per replica (GiB)")
    num_blocks: int | None = Field(None, ge=1, le=MAX_COUNT, description="or its size in KV blocks")
    eviction: Policy = Field(
        default_factory=lambda: PolicyRef(type="lru"), description="which CPU units leave first"
    )
    pcie_gbit_per_s: float | None = Field(
        None, ge=1e-3, le=1e6, description="per direction (default: the GPU's PCIe rate × 0.8)"
    )
    latency_s: float = Field(0.0, ge=0, le=3600, description="PCIe latency of one load or demotion")

    @model_validator(mode="after")
    def _one_size(self):
        if (self.size_gib is None) == (self.num_blocks is None):
            raise ValueError("give exactly one of size_gib and num_blocks")
        return self

    @field_validator("eviction")
    @classmethod
    def _known_eviction(cls, v: PolicyRef, info: ValidationInfo):
        return _policy(EVICTION, v, info, "cache.cpu_tier.eviction", leading=1)


class CacheConfig(_Strict):
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV block (vLLM)")
    num_gpu_blocks: int | Literal["auto"] = Field(
        "auto", description="KV blocks per replica; auto sizes them from GPU memory as vLLM does"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_prefix_caching: bool = Field(
        True, description="reuse cached prompt units across requests (vLLM)"
    )
    layout: Literal["contiguous", "msa"] = Field(
        "contiguous",
        description="contiguous: reuse the cached prefix up to the first hole (vLLM); msa: reuse "
        "every cached unit and recompute the holes (multi-segment attention, AsymCache)",
    )
    eviction: Policy = Field(default_factory=lambda: PolicyRef(type="lru"))
    checkpoint: Policy = Field(
        default_factory=lambda: PolicyRef(type="none"),
        description="hybrid and recurrent models: where along a prompt recurrent states are "
        "stored (none, every, balanced, sqrt, log2, dp)",
    )
    checkpoint_capture: Literal["chunk", "scan"] = Field(
        "chunk",
        description="chunk: a prefill chunk ends at each checkpoint (vLLM's way); scan: the "
        "chunked scan writes out the states at the checkpoints a chunk passes",
    )
    isolation: int | None = Field(
        None, ge=1, description="keep the checkpoints of the last N sequences only (FIFO)"
    )
    cpu_tier: CpuTierConfig | None = Field(None, description="a CPU KV pool over PCIe")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto",
        description="the KV cache's element type (vLLM): auto, the model's (bf16); fp8, one byte "
        "(half the KV bytes: capacity, transfers and attention's reads follow)",
    )

    @field_validator("num_gpu_blocks")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("must be a positive integer or 'auto'")
        return v

    @field_validator("num_gpu_blocks")
    @classmethod
    def _not_huge(cls, v):
        if v != "auto" and v > MAX_COUNT:
            raise ValueError(f"must be at most {MAX_COUNT}")
        return v

    @field_validator("eviction")
    @classmethod
    def _known_eviction(cls, v: PolicyRef, info: ValidationInfo):
        return _policy(EVICTION, v, info, "cache.eviction", leading=1)

    @field_validator("checkpoint")
    @classmethod
    def _known_checkpoint(cls, v: PolicyRef):
        CHECKPOINT.resolve(v.type)
        return v


class FixedChunking(_Strict):
    type: Literal["fixed"]


class AdaptiveChunkingConfig(_Strict):
    """Each iteration's prefill tokens sized from the latency model (see simulator/chunking.py)."""

    type: Literal["adaptive"]
    target_s: float = Field(0.05, gt=0, description="iteration time to aim at, empty queue")
    decode_target_s: float | None = Field(
        None, gt=0, description="cap while sequences decode (default: the TPOT SLO)"
    )
    queue_tokens: int = Field(
        16384, ge=1, description="queued prompt tokens that double the target"
    )
    max_target_s: float = Field(0.5, gt=0, description="the target never exceeds this")


def _chunking_ref(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


Chunking = Annotated[
    FixedChunking | AdaptiveChunkingConfig,
    Field(discriminator="type"),
    BeforeValidator(_chunking_ref),
]


class SchedulerConfig(_Strict):
    max_num_batched_tokens: int = Field(8192, ge=1, le=MAX_TOKENS)
    max_num_seqs: int = Field(256, ge=1, le=MAX_COUNT)
    max_model_len: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description="the longest sequence (prompt + output) served, as vLLM's: longer requests "
        "are dropped; a replica's KV cache must hold one (default: the model's context)",
    )
    enable_chunked_prefill: bool = True
    chunk_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description="per-request prefill chunk cap (default: the token budget)",
    )
    max_waiting: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="requests a replica's waiting queue holds at most; an arrival routed to a "
        "full queue is rejected (dropped: 'rejected: queue full'); default: unbounded",
    )
    chunking: Chunking = Field(
        default_factory=lambda: FixedChunking(type="fixed"),
        description="fixed: prefill within the token budget; adaptive: size it from the latency "
        "model to keep iterations near a target time",
    )
    watermark: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of KV blocks admission leaves free (vLLM V0's block manager kept "
        "0.01; V1, the default here, keeps none)",
    )

    @model_validator(mode="after")
    def _budget_holds_decodes(self):
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs})"
            )
        # Without chunking a prompt is one chunk: a cap below the budget would leave every
        # longer prompt waiting for ever (the run would end with it in flight).
        if not self.enable_chunked_prefill and self.chunk_tokens is not None:
            raise ValueError(
                f"chunk_tokens ({self.chunk_tokens}) caps prefill chunks; with "
                "enable_chunked_prefill: false a prompt is one chunk: leave chunk_tokens unset"
            )
        return self


class ClusterConfig(_Strict):
    replicas: int = Field(1, ge=1, le=4096)
    tensor_parallel: Literal[1, 2, 4, 8] = 1

    @field_validator("tensor_parallel", mode="before")
    @classmethod
    def _an_integer(cls, v):
        # Literal compares by equality: without this, true and 2.0 would pass as 1 and 2.
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be the integer 1, 2, 4 or 8")
        return v


class PoolConfig(_Strict):
    """Replicas of one role, model and GPU with their own settings (DESIGN §9, S4). Keys given
    under ``cache``, ``scheduler`` or ``routing`` replace the scenario's for this pool."""

    name: str | None = Field(None, description="default: the role")
    role: Literal["unified", "prefill", "decode"]
    model: PathText | None = Field(None, description="default: the scenario's model")
    hardware: str | None = Field(None, description="default: the scenario's hardware")
    replicas: int = Field(1, ge=1, le=4096)
    tensor_parallel: Literal[1, 2, 4, 8] = 1
    cache: CacheConfig | None = None
    scheduler: SchedulerConfig | None = None
    routing: Policy | None = None

    @field_validator("name")
    @classmethod
    def _a_name(cls, v: str | None):
        if v is not None and (len(v) > MAX_NAME_CHARS or not _NAME.fullmatch(v) or "." in v):
            raise ValueError(
                f"a pool's name: at most {MAX_NAME_CHARS} letters, digits, spaces and -_+=,@() "
                "(no dots: --set pools.<name>.… addresses it)"
            )
        return v

    @field_validator("tensor_parallel", mode="before")
    @classmethod
    def _an_integer(cls, v):
        return ClusterConfig._an_integer(v)

    @field_validator("hardware")
    @classmethod
    def _known_gpu(cls, v: str | None, info: ValidationInfo):
        return None if v is None else Scenario._known_gpu(v, info)

    @field_validator("routing")
    @classmethod
    def _known_routing(cls, v: PolicyRef | None, info: ValidationInfo):
        if v is not None:
            _policy(ROUTING, v, info, "routing", leading=0)
        return v

    @property
    def label(self) -> str:
        return self.name or self.role


class LinkConfig(_Strict):
    """A link from a producer pool to a consumer pool (DESIGN §4)."""

    name: str | None = Field(None, description="default: producer-consumer")
    producer: str = Field(max_length=MAX_NAME_CHARS, description="the pool that sends (its name)")
    consumer: str = Field(max_length=MAX_NAME_CHARS, description="the pool that receives")
    bandwidth_gbit_per_s: float = Field(ge=1e-3, le=1e6, description="per direction")
    latency_s: float = Field(0.0, ge=0, le=3600)
    overhead_s: float = Field(0.0, ge=0, le=3600, description="fixed setup time of a transfer")

    @field_validator("name")
    @classmethod
    def _a_name(cls, v: str | None):
        return PoolConfig._a_name(v)

    scope: Literal["shared", "producer", "pair"] = Field(
        "producer",
        description="shared: one link for all; producer: one per producer replica (its NIC); "
        "pair: one per (producer, consumer) replica pair",
    )

    @property
    def label(self) -> str:
        return self.name or f"{self.producer}-{self.consumer}"


class TransferConfig(_Strict):
    """How a prefill replica hands a sequence to a decode replica (DESIGN §5.2)."""

    codec: Policy = Field(
        default_factory=lambda: PolicyRef(type="raw"),
        description="raw, quantized, layer_recompute, consumer_prefill, scd, scd_reuse_only",
    )
    first_token: Literal["producer", "consumer"] = Field(
        "producer",
        description="producer: the prefill replica samples the first token (same-model P/D); "
        "consumer: the decode replica does, after the hand-off (cross-model, as in SCD)",
    )
    pipelining: bool = Field(
        False, description="layer-wise: the consumer reconstructs a layer while the next arrives"
    )

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, v: PolicyRef, info: ValidationInfo):
        return _policy(TRANSFER, v, info, "transfer.codec", leading=1)


@dataclass(frozen=True)
class PoolSpec:
    """A pool with every setting resolved (the scenario's where the pool gives none)."""

    name: str
    role: str
    model: str
    hardware: str
    replicas: int
    tensor_parallel: int
    cache: CacheConfig
    scheduler: SchedulerConfig
    routing: PolicyRef


class FixedLength(_Strict):
    type: Literal["fixed"]
    value: int = Field(ge=1, le=MAX_TOKENS)


class UniformLength(_Strict):
    type: Literal["uniform"]
    low: int = Field(ge=1, le=MAX_TOKENS)
    high: int = Field(ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class LognormalLength(_Strict):
    type: Literal["lognormal"]
    median: float = Field(gt=0, le=MAX_TOKENS)
    sigma: float = Field(0.5, ge=0, le=10, description="spread of log(length); 10 is absurd")
    min: int = Field(1, ge=1, le=MAX_TOKENS)
    max: int = Field(131072, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        # A median outside [min, max] clamps most lengths to one bound: never what was meant.
        if not self.min <= self.median <= self.max:
            raise ValueError(
                f"median ({self.median:g}) must lie within min ({self.min}) and max ({self.max})"
            )
        return self


LengthSpec = Annotated[FixedLength | UniformLength | LognormalLength, Field(discriminator="type")]


class SharedPrefix(_Strict):
    prefixes: int = Field(
        ge=1, le=1_000_000, description="number of distinct shared prefixes (system prompts)"
    )
    tokens: int = Field(
        ge=1, le=MAX_TOKENS, description="tokens of each shared prefix (rounded down to units)"
    )
    zipf: float = Field(1.0, ge=0, le=100, description="popularity skew across prefixes")


class _WorkloadBase(_Strict):
    rate_scale: float = Field(1.0, ge=1e-6, le=1e6, description="multiply the arrival rate by this")
    max_requests: int | None = Field(None, ge=1, le=MAX_COUNT)


class TraceWorkload(_WorkloadBase):
    type: Literal["trace"]
    path: PathText = Field(description="trace file, relative to the scenario file")
    format: Literal["mooncake", "azure", "burstgpt", "kvsim", "vidur", "splitwise", "sharegpt"]


class SyntheticWorkload(_WorkloadBase):
    type: Literal["synthetic"]
    requests: int = Field(ge=1, le=MAX_COUNT)
    rate: float = Field(gt=0, le=1e9, description="mean arrivals per second")
    arrival: Literal["poisson", "gamma"] = "poisson"
    cv: float = Field(1.0, ge=0.01, le=100, description="coefficient of variation of gaps (gamma)")
    prompt_tokens: LengthSpec
    output_tokens: LengthSpec
    shared_prefix: SharedPrefix | None = None
    unit_tokens: int = Field(
        256, ge=1, le=MAX_TOKENS, description="tokens per content unit (prefix-cache id)"
    )

    @field_validator("rate")
    @classmethod
    def _not_vanishing(cls, v: float):
        if v < 1e-6:
            raise ValueError("must be at least 1e-06 (a request every 11.6 days)")
        return v


class FixedDuration(_Strict):
    type: Literal["fixed"]
    value_s: float = Field(ge=0)


class LognormalDuration(_Strict):
    type: Literal["lognormal"]
    median_s: float = Field(gt=0)
    sigma: float = Field(1.0, ge=0)


DurationSpec = Annotated[FixedDuration | LognormalDuration, Field(discriminator="type")]


class SessionWorkload(_WorkloadBase):
    """Long-context multi-turn sessions (LongBench/LooGLE-like; AsymCache's setting), closed
    loop: a session's next question arrives a think time after the previous answer."""

    type: Literal["sessions"]
    requests: int = Field(ge=1, description="turns in all")
    rate: float = Field(gt=0, description="mean requests per second")
    context_tokens: LengthSpec = Field(description="each session's document")
    turns: LengthSpec = Field(description="turns per session")
    question_tokens: LengthSpec
    output_tokens: int = Field(ge=1, description="answer tokens of every request")
    system_prompt_tokens: int = Field(1024, ge=0, description="shared by every session")
    dispersion: float = Field(
        5.0, gt=0, description="inter-session over intra-session arrival rate (5 low, 10 high)"
    )
    start_cv: float = Field(0.25, gt=0, description="CV of the gaps between session starts")
    think_cv: float = Field(0.25, gt=0, description="CV of the think times within a session")
    unit_tokens: int = Field(64, ge=1, description="tokens per content unit (prefix-cache id)")


class AgentWorkload(_WorkloadBase):
    """Agent jobs: LLM calls chained by tool calls (each call's prompt holds every earlier call's
    output and tool result), closed loop."""

    type: Literal["agent"]
    requests: int = Field(ge=1, description="LLM calls in all")
    rate: float = Field(gt=0, description="mean calls per second")
    task_tokens: LengthSpec
    calls: LengthSpec = Field(description="LLM calls per job")
    output_tokens: LengthSpec
    tool_result_tokens: LengthSpec
    tool_s: DurationSpec = Field(description="tool-call duration between calls")
    system_prompt_tokens: int = Field(2048, ge=0)
    start_cv: float = Field(1.0, gt=0, description="CV of the gaps between job starts")
    unit_tokens: int = Field(64, ge=1, description="tokens per content unit (prefix-cache id)")


class GroupedWorkload(_WorkloadBase):
    """Requests over shared contexts (Sparse Prefix Caching's document QA and system prompts):
    each prompt is its group's context and then its own tokens; each group is a Poisson process
    of rate / groups, and the groups' requests are interleaved by arrival."""

    type: Literal["grouped"]
    groups: int = Field(ge=1, le=1_000_000, description="shared contexts (documents, prompts)")
    queries: LengthSpec = Field(description="requests per group (at least 1)")
    context_tokens: LengthSpec = Field(description="each group's shared context")
    own_tokens: LengthSpec = Field(description="each request's tokens after the context")
    output_tokens: LengthSpec
    rate: float = Field(gt=0, description="mean requests per second, all groups together")
    max_prompt_tokens: int = Field(
        16384, ge=2, description="longer prompts are clipped by shortening the context"
    )
    unit_tokens: int = Field(64, ge=1, description="tokens per content unit (prefix-cache id)")


Workload = Annotated[
    TraceWorkload | SyntheticWorkload | SessionWorkload | AgentWorkload | GroupedWorkload,
    Field(discriminator="type"),
]


class SLO(_Strict):
    ttft_s: float = Field(2.0, gt=0, le=1e9)
    tpot_s: float = Field(0.1, gt=0, le=1e9)


class LatencyConfig(_Strict):
    type: Literal["roofline", "profile"] = "roofline"
    path: PathText | None = Field(None, description="calibration profile YAML (type: profile)")
    fallback: Literal["none", "roofline"] = Field(
        "none", description="price ops the profile lacks with the roofline model"
    )

    @model_validator(mode="after")
    def _profile_needs_path(self):
        if self.type == "profile" and not self.path:
            raise ValueError("type: profile needs path: <profile.yaml>")
        return self


class SimulationConfig(_Strict):
    exact_steps: bool = Field(
        False, description="price every decode iteration alone (no fast-forward)"
    )
    warmup_requests: int = Field(
        0,
        ge=0,
        description="the first N requests (by id) only warm caches and learning policies: "
        "results cover the rest",
    )


class Scenario(_Strict):
    """Everything one simulation run needs."""

    name: str = Field(
        "scenario",
        description="a name (letters, digits, space and ._-+=,@()), not a path: results go to "
        "runs/<name>",
    )
    description: str = ""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    model: PathText = Field(description="catalog name or path to a Hugging Face config.json")
    hardware: str = Field(description="GPU catalog name")
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="one unified pool (or give pools:)"
    )
    pools: list[PoolConfig] = Field(
        default_factory=list,
        description="one unified pool, or a prefill and a decode pool (instead of cluster:)",
    )
    links: list[LinkConfig] = Field(default_factory=list)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    routing: Policy = Field(default_factory=lambda: PolicyRef(type="least_loaded"))
    workload: Workload
    slo: SLO = Field(default_factory=SLO)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="<scenario>")
    _gpus: dict = PrivateAttr(default_factory=dict)
    _gpu_files: dict = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _a_name(cls, v: str):
        if len(v) > MAX_NAME_CHARS:
            raise ValueError(f"a name is at most {MAX_NAME_CHARS} characters")
        if not _NAME.fullmatch(v) or v != v.strip():
            raise ValueError(
                "a name starts with a letter or digit and holds only letters, digits, spaces "
                "and ._-+=,@() (it names the folder runs/<name>, so never a path)"
            )
        return v

    @field_validator("routing")
    @classmethod
    def _known_routing(cls, v: PolicyRef, info: ValidationInfo):
        return _policy(ROUTING, v, info, "routing", leading=0)

    @field_validator("hardware")
    @classmethod
    def _known_gpu(cls, v: str, info: ValidationInfo):
        user = (info.context or {}).get("gpus", {})
        if v.lower() not in gpu_catalog() and v.lower() not in user:
            allowed = ", ".join([*gpu_catalog(), *user])
            raise ValueError(f"not in the GPU catalog or a --hardware-file; allowed: {allowed}")
        get_gpu(v, user)
        return v.lower()

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def gpu(self, name: str | None = None) -> GpuSpec:
        """A GPU by name (default: ``hardware``), from the catalog or a hardware file."""
        return get_gpu(name or self.hardware, self._gpus)

    def gpu_file(self, name: str | None = None) -> str | None:
        """The hardware file a GPU was read from (None: the catalog's)."""
        return self._gpu_files.get((name or self.hardware).lower())

    @property
    def source(self) -> str:
        """Where the scenario came from (its file), as errors name it."""
        return self._source

    def trace_path(self) -> Path:
        assert isinstance(self.workload, TraceWorkload)
        p = Path(self.workload.path)
        return p if p.is_absolute() else self._base_dir / p

    def profile_path(self) -> Path:
        p = Path(self.latency.path or "")
        return p if p.is_absolute() else self._base_dir / p

    def pool_specs(self) -> list[PoolSpec]:
        """The pools with every setting resolved; a flat ``cluster:`` is one unified pool."""
        if not self.pools:
            c = self.cluster
            return [
                PoolSpec("unified", "unified", self.model, self.hardware, c.replicas,
                         c.tensor_parallel, self.cache, self.scheduler, self.routing)
            ]  # fmt: skip
        return [
            PoolSpec(
                p.label,
                p.role,
                p.model or self.model,
                p.hardware or self.hardware,
                p.replicas,
                p.tensor_parallel,
                _merged(self.cache, p.cache),
                _merged(self.scheduler, p.scheduler),
                p.routing or self.routing,
            )  # fmt: skip
            for p in self.pools
        ]

    @property
    def disaggregated(self) -> bool:
        """A prefill and a decode pool (a hand-off over a link) rather than one unified pool."""
        return any(p.role != "unified" for p in self.pools)

    def resolved_yaml(self) -> str:
        """The scenario with every default filled in, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _merged(base: BaseModel, part: BaseModel | None) -> BaseModel:
    """``base`` with the fields ``part`` was given explicitly (a pool's own settings)."""
    if part is None:
        return base
    merged = base.model_dump()
    merged.update(part.model_dump(include=part.model_fields_set))
    return type(base).model_validate(merged)


def _scenario_fields():
    """Every (name, field) of the scenario's models, each model once."""
    stack: list[type[BaseModel]] = [Scenario]
    seen = set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, f in m.model_fields.items():
            yield name, f
            stack.extend(_models_in(f.annotation))


def _all_field_names() -> set[str]:
    return {name for name, _ in _scenario_fields()}


def _models_in(annotation) -> list[type[BaseModel]]:
    out = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    for arg in get_args(annotation):  # unions, Optional, Annotated (origin first)
        out.extend(_models_in(arg))
    return out


def _keys_at(loc: tuple) -> list[str]:
    """The keys allowed beside the last element of a validation error's location: the fields of
    the model that holds it (a discriminated union's member is chosen by its tag in the path,
    as in ``workload.trace.rate``); empty if the path cannot be followed."""
    models: list[type[BaseModel]] = [Scenario]
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list: same models
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if fields:
            models = [x for f in fields for x in _models_in(f.annotation)]
            continue
        tagged = [m for m in models if "type" in m.model_fields
                  and part in get_args(m.model_fields["type"].annotation)]  # fmt: skip
        if not tagged:
            return []
        models = tagged
    return sorted({name for m in models for name in m.model_fields})


def _closest(key: str, allowed: list[str]) -> str | None:
    """The allowed key a mistyped ``key`` most likely meant: the one key it begins (``rate`` →
    ``rate_scale``, before the closer spelling ``format``), else a close spelling."""
    longer = [a for a in allowed if len(key) >= 3 and a.startswith(key)]
    if len(longer) == 1:
        return longer[0]
    hint = difflib.get_close_matches(key, allowed, n=1)
    return hint[0] if hint else None


def _one_line(e: ValidationError, source: str) -> str:
    errors = e.errors()
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    # Discriminated unions put the tag in the path (workload.trace.path); keep it readable.
    loc = clip(loc, 120)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        allowed = _keys_at(err["loc"])
        hint = _closest(key, allowed or sorted(_all_field_names()))
        msg = f"unknown key {echo(key, 80)}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        elif allowed:
            msg += f"; allowed here: {', '.join(allowed)}"
        line = f"{source}: {loc}: {msg}"
    elif err["type"] == "missing":
        line = f"{source}: {loc}: required field is missing"
    else:
        msg = msg.removeprefix("Value error, ")
        line = f"{source}: {loc}: {echo(err['input'])} is not allowed: {msg}"
    more = len(errors) - 1
    return line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _override_value(path: str, raw: str):
    """An override's value, parsed as YAML within the same bounds as a file; text that is not
    YAML at all stays a string (``--set description=a: b [c``)."""
    try:
        return parse_yaml(raw)
    except yaml.constructor.ConstructorError as e:  # duplicate keys, bounds: refuse
        raise KvsimError(yaml_error_line(e, f"--set {clip(path, 80)}", lines=False)) from None
    except yaml.YAMLError:
        return raw


def _path_fields() -> set[str]:
    """Names of the scenario's fields that hold a file path (typed :data:`PathText`)."""
    return {
        name
        for name, f in _scenario_fields()
        if any(getattr(x, "func", None) is _path_text for x in f.metadata)
    }


_PATH_FIELDS = _path_fields()


def _is_path_value(key: str, value: Any) -> bool:
    """Whether ``value`` under ``key`` names a file: any path field, except a ``model`` that is
    a catalog name (a model file is a Hugging Face ``config.json``, as ``get_model`` reads it)."""
    if not isinstance(value, str) or not value or key not in _PATH_FIELDS:
        return False
    return key != "model" or value.endswith(".json")


def _anchor_paths(key: str, value: Any, folder: Path) -> Any:
    """``value`` with every relative file path in it made absolute against ``folder``."""
    if isinstance(value, dict):
        return {k: _anchor_paths(str(k), v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_anchor_paths(key, v, folder) for v in value]
    if _is_path_value(key, value) and not Path(value).is_absolute():
        return str(folder / value)
    return value


def apply_overrides(
    doc: dict, overrides: list[str], source: str, path_dir: Path | None = None
) -> dict:
    """Apply ``path=value`` overrides (value parsed as YAML) to a raw scenario document (a copy:
    the caller's dict is left as it was). ``path_dir``: where a relative file path given in an
    override is (made absolute against it); None leaves it relative, to the scenario's folder."""
    doc = copy.deepcopy(doc)
    for item in overrides:
        if "=" not in item:
            raise KvsimError(f"--set {echo(item)}: expected path=value, e.g. cluster.replicas=4")
        path, _, raw = item.partition("=")
        value = _override_value(path, raw)
        keys = path.strip().split(".")
        if path_dir is not None:
            value = _anchor_paths(keys[-1], value, path_dir)
        node = doc
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                k = _list_index(node, k, path, ".".join(keys[:i]))
                child = node[k]
            else:
                child = node.get(k)
            if isinstance(child, str):  # a policy given by name: turn it into a mapping
                child = {"type": child}
            if child is None:
                child = {}
            if not isinstance(child, (dict, list)):
                raise KvsimError(
                    f"--set {clip(path, 80)}: {echo(k, 80)} is not a section of the scenario"
                )
            node[k] = child
            node = child
        last = keys[-1]
        if isinstance(node, list):
            last = _list_index(node, last, path, ".".join(keys[:-1]))
        node[last] = value
    return doc


def _list_index(items: list, key: str, path: str, where: str) -> int:
    """A list of pools or links is addressed by index or by an item's name (a pool's name
    defaults to its role, a link's to producer-consumer)."""
    for i, item in enumerate(items):
        if isinstance(item, dict):
            name = item.get("name") or item.get("role")
            if name is None and "producer" in item:
                name = f"{item.get('producer')}-{item.get('consumer')}"
            if name == key:
                return i
    if key.isdigit() and int(key) < len(items):
        return int(key)
    names = [str((x.get("name") or x.get("role")) if isinstance(x, dict) else x) for x in items]
    raise KvsimError(
        f"--set {path}: {where} has no item {key!r}; allowed: an index below {len(items)} or a "
        f"name ({', '.join(names)})"
    )


def load_scenario(
    path: str | Path,
    overrides: list[str] | None = None,
    policy_path: tuple[str | Path, ...] = (),
    override_dir: str | Path | None = None,
    hardware_files: tuple[str | Path, ...] = (),
) -> Scenario:
    """Read, override and validate a scenario file; raises :class:`KvsimError` on bad input.
    ``policy_path``: folders a dotted policy path may be imported from, besides the installed
    packages. File paths in the scenario are relative to its folder; file paths in
    ``overrides`` are relative to ``override_dir`` (default: the current folder, as for any path
    typed on a command line). ``hardware_files``: YAML files of GPUs added to the catalog's."""
    path = Path(path)
    doc = read_yaml_mapping(path, "scenario file", " (model:, hardware:, workload: …)")
    return scenario_from_dict(
        doc,
        source=str(path),
        base_dir=path.parent,
        overrides=overrides,
        policy_path=policy_path,
        override_dir=override_dir,
        hardware_files=hardware_files,
    )


def user_gpus(hardware_files: tuple[str | Path, ...]) -> tuple[dict, dict]:
    """The GPUs of hardware files by name, and the file each came from; a name given twice is
    an error."""
    gpus: dict = {}
    files: dict = {}
    for f in hardware_files:
        for name, spec in read_hardware_file(f).items():
            if name in gpus:
                raise KvsimError(f"{f}: {name!r}: also in {files[name]}; GPU names must differ")
            gpus[name], files[name] = spec, str(f)
    return gpus, files


def scenario_from_dict(
    doc: dict,
    source: str = "<scenario>",
    base_dir: Path | None = None,
    overrides: list[str] | None = None,
    policy_path: tuple[str | Path, ...] = (),
    override_dir: str | Path | None = None,
    hardware_files: tuple[str | Path, ...] = (),
) -> Scenario:
    """Validate a scenario given as a dict (as parsed from YAML); file paths in ``overrides``
    are relative to ``override_dir`` (default: the current folder); ``hardware_files`` add GPUs
    to the catalog's."""
    anchor = Path(override_dir) if override_dir is not None else Path.cwd()
    doc = apply_overrides(doc, overrides or [], source, path_dir=anchor.absolute())
    gpus, gpu_files = user_gpus(tuple(hardware_files))
    try:
        context = {"policy_path": tuple(policy_path), "gpus": gpus}
        s = Scenario.model_validate(doc, context=context)
    except ValidationError as e:
        raise KvsimError(_one_line(e, source)) from None
    except KvsimError as e:
        raise KvsimError(f"{source}: {e}") from None
    s._base_dir = (base_dir or Path.cwd()).resolve()
    s._source = source
    s._gpus, s._gpu_files = gpus, gpu_files
    _check_semantics(s, source)
    return s


def _check_semantics(s: Scenario, source: str) -> None:
    """Cross-field checks that need the catalogs or the file system."""
    pools = _resolved_pools(s, source)
    models = {}
    for spec, where in pools:
        try:
            models[spec.name] = model = get_model(spec.model, s.base_dir)
        except KvsimError as e:
            raise KvsimError(f"{source}: {where or ''}model: {e}") from None
        _check_pool(s, spec, model, source, where)
    _check_links(s, source, models)
    if s.latency.type == "profile" and not s.profile_path().is_file():
        raise KvsimError(f"{source}: latency.path: profile {clip(str(s.profile_path()))} not found")
    w = s.workload
    if isinstance(w, TraceWorkload):
        if not s.trace_path().is_file():
            raise KvsimError(
                f"{source}: workload.path: trace file {clip(str(s.trace_path()))} not found"
            )
        unit = 512 if w.format == "mooncake" else None
    else:
        unit = w.unit_tokens
        if isinstance(w, SessionWorkload) and w.output_tokens % unit:
            raise KvsimError(
                f"{source}: workload.output_tokens: {w.output_tokens} must be a multiple of "
                f"unit_tokens {unit} (answers fill whole units, so that later turns reuse them)"
            )
    if s.simulation.warmup_requests:
        from .cluster import expected_requests

        n = expected_requests(s)
        if n is not None and s.simulation.warmup_requests >= n:
            raise KvsimError(
                f"{source}: simulation.warmup_requests: {s.simulation.warmup_requests} leaves "
                f"none of the workload's {n} requests to measure; use fewer than {n}"
            )
    for spec, where in pools:
        bs = spec.cache.block_size
        if unit is not None and unit % bs:
            raise KvsimError(
                f"{source}: {where or ''}cache.block_size: {bs} must divide the workload's "
                f"content unit of {unit} tokens"
            )


def _resolved_pools(s: Scenario, source: str) -> list[tuple[PoolSpec, str | None]]:
    """The pools with their settings merged, and the place an error names (None: the flat
    ``cluster:``, whose fields keep their historical names)."""
    if not s.pools:
        return [(s.pool_specs()[0], None)]
    if s.cluster != ClusterConfig():
        raise KvsimError(f"{source}: cluster: give either cluster: (one unified pool) or pools:, "
                         "not both")  # fmt: skip
    roles = sorted(p.role for p in s.pools)
    if roles not in (["unified"], ["decode", "prefill"]):
        raise KvsimError(f"{source}: pools: roles {roles} are not allowed; allowed: one unified "
                         "pool, or one prefill and one decode pool")  # fmt: skip
    names = [p.label for p in s.pools]
    if len(set(names)) != len(names):
        raise KvsimError(f"{source}: pools: two pools are named {names[0]!r}; names must differ")
    out = []
    for i, p in enumerate(s.pools):
        try:
            spec = s.pool_specs()[i]
        except ValidationError as e:
            raise KvsimError(_one_line(e, f"{source}: pools.{p.label}")) from None
        out.append((spec, f"pools.{p.label}."))
    return out


def _check_pool(s: Scenario, spec: PoolSpec, model, source: str, where: str | None) -> None:
    cache, tp = spec.cache, spec.tensor_parallel
    at = where or ""
    tp_field = f"{where}tensor_parallel" if where else "cluster.tensor_parallel"
    if model.recurrent is None and cache.checkpoint.type != "none":
        raise KvsimError(
            f"{source}: {at}cache.checkpoint: {cache.checkpoint.type!r} needs a model with "
            f"recurrent layers; {model.name} has none (use none)"
        )
    if model.recurrent is None and cache.isolation is not None:
        raise KvsimError(
            f"{source}: {at}cache.isolation: {cache.isolation} applies to the checkpoints of a "
            f"model with recurrent layers; {model.name} has none (remove it)"
        )
    if model.recurrent is None and cache.checkpoint_capture != "chunk":
        raise KvsimError(
            f"{source}: {at}cache.checkpoint_capture: {cache.checkpoint_capture!r} applies to a "
            f"model with recurrent layers; {model.name} has none (remove it)"
        )
    if model.recurrent is not None and cache.layout != "contiguous":
        raise KvsimError(
            f"{source}: {at}cache.layout: {model.name} has recurrent layers, which resume from "
            "one checkpoint with the KV before it: use contiguous"
        )
    limit = spec.scheduler.max_model_len
    if limit is not None and limit > model.max_position:
        raise KvsimError(
            f"{source}: {at}scheduler.max_model_len: {limit} exceeds {model.name}'s context of "
            f"{model.max_position} tokens"
        )
    if model.attention is not None and model.heads % tp:
        raise KvsimError(
            f"{source}: {tp_field}: {tp} does not divide the model's {model.heads} attention heads"
        )
    layouts = getattr(EVICTION.resolve(cache.eviction.type), "layouts", None)
    if isinstance(layouts, (tuple, list, set, frozenset)) and cache.layout not in layouts:
        raise KvsimError(
            f"{source}: {at}cache.eviction: {cache.eviction.type!r} needs cache.layout "
            f"{' or '.join(layouts)}, not {cache.layout!r}"
        )
    if cache.cpu_tier is not None:
        if cache.layout != "contiguous" or model.recurrent is not None or model.attention is None:
            raise KvsimError(
                f"{source}: {at}cache.cpu_tier: a CPU tier needs cache.layout contiguous and a "
                f"model without recurrent layers ({model.name}, {cache.layout})"
            )
    if spec.role != "unified" and model.recurrent is not None:
        raise KvsimError(
            f"{source}: {at}model: {model.name} has recurrent layers; disaggregated pools hand "
            "off KV only (recurrent states are not transferred): use a unified pool"
        )


def _check_links(s: Scenario, source: str, models: dict) -> None:
    """A prefill and a decode pool need exactly one link between them; a unified pool none."""
    if not s.disaggregated:
        if s.links:
            raise KvsimError(f"{source}: links: a unified pool hands nothing off; links need a "
                             "prefill and a decode pool")  # fmt: skip
        if s.transfer != TransferConfig():
            raise KvsimError(f"{source}: transfer: needs a prefill and a decode pool (pools:)")
        return
    prefill = next(p.label for p in s.pools if p.role == "prefill")
    decode = next(p.label for p in s.pools if p.role == "decode")
    for i, link in enumerate(s.links):
        for end in ("producer", "consumer"):
            name = getattr(link, end)
            if name not in models:
                raise KvsimError(f"{source}: links.{i}.{end}: no pool named {name!r}; allowed: "
                                 f"{', '.join(models)}")  # fmt: skip
        if (link.producer, link.consumer) != (prefill, decode):
            raise KvsimError(f"{source}: links.{i}: {link.producer} -> {link.consumer} is not "
                             f"allowed; a link goes from the prefill pool ({prefill}) to the "
                             f"decode pool ({decode})")  # fmt: skip
    if len(s.links) != 1:
        raise KvsimError(
            f"{source}: links: the pools {prefill} -> {decode} need exactly one link, "
            f"e.g. links: [{{producer: {prefill}, consumer: {decode}, "
            f"bandwidth_gbit_per_s: 200}}] ({len(s.links)} given)"
        )
    codec = s.transfer.codec
    p, d = models[prefill], models[decode]
    if codec.type != "consumer_prefill" and p != d:
        diff = _architecture_difference(p, d)
        if diff:
            raise KvsimError(
                f"{source}: transfer.codec: {codec.type!r} hands KV from {p.name} to {d.name}, "
                f"which differ in architecture ({diff}); KV transfer needs the same "
                "architecture (consumer_prefill does not)"
            )


def _architecture_difference(a, b) -> str:
    """The first layer-shape field two models differ in ('' when the same architecture: KV and
    hidden states of one fit the other's layers; vocabulary and weights may differ)."""
    fields = (("attention layers", lambda m: m.attention_layers), ("hidden", lambda m: m.hidden),
              ("heads", lambda m: m.heads), ("kv_heads", lambda m: m.kv_heads),
              ("head_dim", lambda m: m.head_dim), ("layers", lambda m: m.layers))  # fmt: skip
    for name, get in fields:
        if get(a) != get(b):
            return f"{name} {get(a)} vs {get(b)}"
    return ""
