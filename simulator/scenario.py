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
from .policies import CHECKPOINT, EVICTION, ROUTING

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
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
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

    def resolved_yaml(self) -> str:
        """The scenario with every default filled in, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _all_field_names() -> set[str]:
    names: set[str] = set()
    stack: list[type[BaseModel]] = [Scenario]
    seen = set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, f in m.model_fields.items():
            names.add(name)
            for sub in _models_in(f.annotation):
                stack.append(sub)
    return names


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
    names: set[str] = set()
    stack: list[type[BaseModel]] = [Scenario]
    seen = set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, f in m.model_fields.items():
            if any(getattr(x, "func", None) is _path_text for x in f.metadata):
                names.add(name)
            stack.extend(_models_in(f.annotation))
    return names


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
        for k in keys[:-1]:
            child = node.get(k)
            if isinstance(child, str):  # a policy given by name: turn it into a mapping
                child = {"type": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise KvsimError(
                    f"--set {clip(path, 80)}: {echo(k, 80)} is not a section of the scenario"
                )
            node[k] = child
            node = child
        node[keys[-1]] = value
    return doc


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
    try:
        model = get_model(s.model, s.base_dir)
    except KvsimError as e:
        raise KvsimError(f"{source}: model: {e}") from None
    if model.recurrent is None and s.cache.checkpoint.type != "none":
        raise KvsimError(
            f"{source}: cache.checkpoint: {s.cache.checkpoint.type!r} needs a model with "
            f"recurrent layers; {model.name} has none (use none)"
        )
    if model.recurrent is None and s.cache.isolation is not None:
        raise KvsimError(
            f"{source}: cache.isolation: {s.cache.isolation} applies to the checkpoints of a "
            f"model with recurrent layers; {model.name} has none (remove it)"
        )
    if model.recurrent is None and s.cache.checkpoint_capture != "chunk":
        raise KvsimError(
            f"{source}: cache.checkpoint_capture: {s.cache.checkpoint_capture!r} applies to a "
            f"model with recurrent layers; {model.name} has none (remove it)"
        )
    if model.recurrent is not None and s.cache.layout != "contiguous":
        raise KvsimError(
            f"{source}: cache.layout: {model.name} has recurrent layers, which resume from one "
            "checkpoint with the KV before it: use contiguous"
        )
    limit = s.scheduler.max_model_len
    if limit is not None and limit > model.max_position:
        raise KvsimError(
            f"{source}: scheduler.max_model_len: {limit} exceeds {model.name}'s context of "
            f"{model.max_position} tokens"
        )
    if model.attention is not None and model.heads % s.cluster.tensor_parallel:
        raise KvsimError(
            f"{source}: cluster.tensor_parallel: {s.cluster.tensor_parallel} does not divide "
            f"the model's {model.heads} attention heads"
        )
    layouts = getattr(EVICTION.resolve(s.cache.eviction.type), "layouts", None)
    if isinstance(layouts, (tuple, list, set, frozenset)) and s.cache.layout not in layouts:
        raise KvsimError(
            f"{source}: cache.eviction: {s.cache.eviction.type!r} needs cache.layout "
            f"{' or '.join(layouts)}, not {s.cache.layout!r}"
        )
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
    if unit is not None and unit % s.cache.block_size:
        raise KvsimError(
            f"{source}: cache.block_size: {s.cache.block_size} must divide the workload's "
            f"content unit of {unit} tokens"
        )
