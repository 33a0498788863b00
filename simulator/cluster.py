"""Build a cluster from a scenario and replay its workload through it (``simulate``).

Arrivals stream from the workload iterator: one pending arrival event at a time, so memory does not
grow with trace length. NOTE: arrivals are scheduled with SimPy's URGENT priority so that, at equal
times, they are handled before engine boundaries (see ``replica`` for why this keeps fast-forward
exact).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import simpy
from simpy.events import URGENT

from kvsim.traces import TraceError

from .catalog import GpuSpec, ModelSpec, get_model, with_kv_cache_dtype
from .clock import Clock
from .errors import KvsimError
from .handoff import Handoff, make_codec
from .metrics import Results
from .pool import Pool
from .recorder import Recorder, RequestRecord
from .replica import Replica
from .scenario import (
    AgentWorkload,
    GroupedWorkload,
    PoolSpec,
    Scenario,
    SessionWorkload,
    SyntheticWorkload,
    TraceWorkload,
)
from .scheduler import Seq
from .timeseries import MAX_TIME_NS, QueueSeries
from .usage import usage_summary
from .workload import Workload

GIB = 1 << 30
QUEUE_FULL = "rejected: queue full"


def _pool(spec) -> PoolSpec:
    """A pool's settings: a flat scenario's one unified pool, or the pool given."""
    return spec.pool_specs()[0] if isinstance(spec, Scenario) else spec


def check_fits(spec: PoolSpec | Scenario, model: ModelSpec, gpu: GpuSpec) -> None:
    """One line if the model's weights (every expert) do not fit on the GPUs given."""
    spec = _pool(spec)
    cache, tp = spec.cache, spec.tensor_parallel
    usable = gpu.memory_gib * GIB * cache.gpu_memory_utilization
    if model.weight_bytes / tp > usable:
        raise KvsimError(
            f"{'' if spec.role == 'unified' else f'pools.{spec.name}.'}model: {model.name} does "
            f"not fit: {model.weight_bytes / tp / GIB:.1f} GiB of weights "
            f"per GPU at tensor_parallel {tp}, but {gpu.name} × gpu_memory_utilization "
            f"{cache.gpu_memory_utilization} leaves {usable / GIB:.1f} GiB; raise "
            "cluster.tensor_parallel"
        )


def state_bytes_rank(model: ModelSpec, tp: int) -> int:
    """Recurrent-state bytes of one sequence on one tensor-parallel rank (heads are split)."""
    return -(-model.state_bytes // tp)


def state_blocks(spec: PoolSpec | Scenario, model: ModelSpec) -> int:
    """Pool blocks one recurrent state takes: its bytes over a KV block's, rounded up; 1 when
    the model has no attention (the pool's unit is then a state); 0 without recurrent layers."""
    if model.recurrent is None:
        return 0
    if model.attention is None:
        return 1
    spec = _pool(spec)
    tp = spec.tensor_parallel
    block_bytes = spec.cache.block_size * model.kv_bytes_per_token_rank(tp)
    return -(-state_bytes_rank(model, tp) // block_bytes)


def profile_peak_bytes(spec: PoolSpec | Scenario, model: ModelSpec) -> float:
    """The peak torch allocation of vLLM's profile run, per GPU: the larger of a dummy forward
    pass over ``max_num_batched_tokens`` tokens (no attention kernels run in it) and the sampler
    over ``min(max_num_seqs, max_num_batched_tokens)`` rows of full-vocabulary logits.

    The sampler holds fp32 logits plus a full sort's fp32 values and int64 indices (top-k/top-p):
    16 bytes a logit. The forward pass holds, per token, the MLP's gate/up output and its
    activation (3 × intermediate, or top-k experts' for MoE) and about 4 hidden-size tensors
    (fitted to the logged peak of CodeLlama-7B: 0.77 GiB measured, 0.79 estimated)."""
    spec = _pool(spec)
    sched, tp, b = spec.scheduler, spec.tensor_parallel, model.dtype_bytes
    width = 4 * model.hidden
    if model.mlp is not None:
        width += 3 * model.intermediate // tp
    if model.moe is not None:
        width += 3 * model.moe.top_k * model.moe.intermediate // tp
    forward = sched.max_num_batched_tokens * b * width
    rows = min(sched.max_num_seqs, sched.max_num_batched_tokens)
    return max(forward, rows * model.vocab * 16.0)


def kv_capacity_blocks(spec: PoolSpec | Scenario, model: ModelSpec, gpu: GpuSpec) -> int:
    """KV blocks per replica of a pool: explicit, or what vLLM v0.11.0 (V1 engine) would
    allocate.

    vLLM's rule (``Worker.determine_available_memory`` in v1/worker/gpu_worker.py,
    ``memory_profiling`` in vllm/utils, ``get_kv_cache_configs`` in v1/core/kv_cache_utils.py);
    the page's bytes follow ``cache.kv_cache_dtype`` (fp8: one byte an element):
    available = total GPU memory × gpu_memory_utilization − weights − peak activation of the
    profile run − non-torch memory gained (cuBLAS workspaces; NCCL and all-reduce buffers at
    TP > 1); blocks = ⌊⌊available / page⌋ / attention layers⌋ with page = 2 × block_size ×
    KV heads per GPU × head size × dtype bytes (K and V of one layer). CUDA-graph memory is not
    deducted in that version (graphs are captured after the KV cache, into the 1 − utilization
    headroom). Block 0 is vLLM's reserved null block, so the scheduler can use one block less:
    that is what this returns."""
    spec = _pool(spec)
    check_fits(spec, model, gpu)
    cache, tp = spec.cache, spec.tensor_parallel
    if cache.num_gpu_blocks != "auto":
        return int(cache.num_gpu_blocks)
    requested = gpu.memory_gib * GIB * cache.gpu_memory_utilization
    non_torch = (gpu.nontorch_gib + (gpu.nontorch_tp_gib if tp > 1 else 0.0)) * GIB
    available = int(
        requested - model.weight_bytes / tp - profile_peak_bytes(spec, model) - non_torch
    )
    if model.attention is None:  # no KV: the pool holds recurrent states only
        blocks = available // state_bytes_rank(model, tp)
    else:
        page = cache.block_size * model.kv_dim(tp) * model.kv_element_bytes
        blocks = (available // page) // model.attention_layers - 1
    if blocks < 1:
        raise KvsimError(
            f"{'' if spec.role == 'unified' else f'pools.{spec.name}.'}"
            f"cache.num_gpu_blocks: auto leaves no memory for the KV cache: {model.name} on "
            f"{tp}× {gpu.name} at gpu_memory_utilization {cache.gpu_memory_utilization}; "
            "raise cluster.tensor_parallel or gpu_memory_utilization"
        )
    return blocks


def pool_model(scenario: Scenario, spec: PoolSpec) -> ModelSpec:
    """The model a pool runs, its KV cache stored as the pool's ``cache.kv_cache_dtype``."""
    return with_kv_cache_dtype(get_model(spec.model, scenario.base_dir), spec.cache.kv_cache_dtype)


def check_max_model_len(spec: PoolSpec | Scenario, model: ModelSpec, capacity: int) -> None:
    """vLLM refuses to start when one sequence of ``max_model_len`` tokens would not fit in a
    replica's KV cache; so does kvsim, when ``scheduler.max_model_len`` is given."""
    spec = _pool(spec)
    limit = spec.scheduler.max_model_len
    if limit is None or model.attention is None:
        return
    need = -(-limit // spec.cache.block_size) + 2 * state_blocks(spec, model)
    if need > capacity:
        at = "" if spec.role == "unified" else f"pools.{spec.name}."
        raise KvsimError(
            f"{at}scheduler.max_model_len: {limit} tokens need {need} KV blocks, more than a "
            f"replica's {capacity} (vLLM refuses to start too); lower max_model_len or give the "
            "KV cache more memory"
        )


def _length(spec):
    from kvsim.traces.generators import LengthDist

    if spec.type == "fixed":
        return LengthDist("fixed", value=spec.value)
    if spec.type == "uniform":
        return LengthDist("uniform", low=spec.low, high=spec.high)
    return LengthDist(
        "lognormal", median=spec.median, sigma=spec.sigma, minimum=spec.min, maximum=spec.max
    )


def workload_requests(scenario: Scenario) -> Iterator:
    """The scenario's request stream (lazy)."""
    from kvsim.traces import read_trace
    from kvsim.traces.generators import synthetic_requests
    from kvsim.traces.groups import grouped_requests
    from kvsim.traces.sessions import Duration, agent_jobs, long_context_sessions

    w = scenario.workload
    if isinstance(w, SyntheticWorkload):
        sp = w.shared_prefix
        stream = synthetic_requests(
            w.requests,
            w.rate,
            _length(w.prompt_tokens),
            _length(w.output_tokens),
            arrival=w.arrival,
            cv=w.cv,
            prefixes=sp.prefixes if sp else 0,
            prefix_tokens=sp.tokens if sp else 0,
            zipf_s=sp.zipf if sp else 1.0,
            unit_tokens=w.unit_tokens,
            seed=scenario.seed,
        )
    elif isinstance(w, SessionWorkload):
        stream = long_context_sessions(
            w.requests, w.rate, _length(w.context_tokens), _length(w.turns),
            _length(w.question_tokens), w.output_tokens, w.system_prompt_tokens, w.dispersion,
            w.start_cv, w.think_cv, w.unit_tokens, scenario.seed,
        )  # fmt: skip
    elif isinstance(w, AgentWorkload):
        d = w.tool_s
        tool = Duration("fixed", value_s=d.value_s) if d.type == "fixed" else Duration(
            "lognormal", median_s=d.median_s, sigma=d.sigma
        )  # fmt: skip
        stream = agent_jobs(
            w.requests, w.rate, _length(w.task_tokens), _length(w.calls),
            _length(w.output_tokens), _length(w.tool_result_tokens), tool,
            w.system_prompt_tokens, w.start_cv, w.unit_tokens, scenario.seed,
        )  # fmt: skip
    elif isinstance(w, GroupedWorkload):
        stream = grouped_requests(
            w.groups, _length(w.queries), _length(w.context_tokens), _length(w.own_tokens),
            _length(w.output_tokens), w.rate, w.unit_tokens, w.max_prompt_tokens, scenario.seed,
        )  # fmt: skip
    else:
        stream = read_trace(scenario.trace_path(), w.format)
    if w.max_requests is not None:
        stream = itertools.islice(stream, w.max_requests)
    return stream


def expected_requests(scenario: Scenario) -> int | None:
    """How many requests the workload will produce, when that is cheap to know."""
    w = scenario.workload
    if isinstance(w, GroupedWorkload):
        from kvsim.traces.groups import group_sizes

        n = sum(group_sizes(w.groups, _length(w.queries), scenario.seed))
        return min(n, w.max_requests or n)
    if not isinstance(w, TraceWorkload):
        return min(w.requests, w.max_requests or w.requests)
    if w.max_requests is not None:
        return w.max_requests
    if w.format in ("sharegpt", "splitwise"):
        return None  # conversations hold several requests; a Splitwise row, batch_size of them
    from kvsim.traces.readers import CSV_FORMATS

    with open(scenario.trace_path(), "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - (1 if w.format in CSV_FORMATS else 0)


def _at(env: simpy.Environment, t_ns: int, callback: Callable) -> None:
    """Run ``callback`` at ``t_ns`` before any ordinary event of that time."""
    ev = simpy.Event(env)
    # NOTE: a pre-triggered event scheduled with URGENT priority: what Timeout does, one
    # priority level up (``link.schedule_at`` in general; inlined on the arrivals' hot path).
    ev._ok = True
    ev._value = None
    ev.callbacks.append(callback)
    env.schedule(ev, URGENT, t_ns - env.now)


class Cluster:
    """Pools of replicas, their routers, the link between them and the arrival stream on one
    SimPy environment."""

    def __init__(self, scenario: Scenario, on_done: Callable[[int], None] | None = None):
        self.scenario = scenario
        self.env = Clock()
        specs = scenario.pool_specs()
        disaggregated = scenario.disaggregated
        self.recorder = Recorder(
            scenario.slo.ttft_s, scenario.slo.tpot_s, scenario.simulation.warmup_requests,
            disaggregated, any(spec.cache.cpu_tier is not None for spec in specs),
        )  # fmt: skip
        self._on_done = on_done or (lambda n: None)
        codec, kinds = None, {}
        if disaggregated:
            by_role = {spec.role: spec for spec in specs}
            pair = [(by_role[r], pool_model(scenario, by_role[r])) for r in ("prefill", "decode")]
            codec = make_codec(scenario, *pair)
            probe = codec.plan(1)  # which op kinds each side runs (a profile must price them)
            kinds = {"prefill": [op.kind for _, op in probe.producer_ops],
                     "decode": [op.kind for _, op in probe.consumer_ops]}  # fmt: skip
        self.pools = [
            Pool(self.env, scenario, spec, self._finisher, kinds.get(spec.role, ()))
            for spec in specs
        ]
        self.entry = next(p for p in self.pools if p.role != "decode")
        """The pool arrivals go to: the unified or the prefill pool."""
        self.decode = next((p for p in self.pools if p.role == "decode"), None)
        self.handoff = None
        if disaggregated:
            self.handoff = Handoff(self.env, scenario, self.entry, self.decode, codec)
        self.replicas: list[Replica] = [r for p in self.pools for r in p.replicas]
        # The entry pool's model, GPU, capacity and latency model (a unified cluster's only ones).
        e = self.entry
        self.model, self.gpu, self.capacity, self.latency = e.model, e.gpu, e.capacity, e.latency
        self.workload = Workload(workload_requests(scenario), self._source())
        self._scale = 1e9 / scenario.workload.rate_scale
        self._session_start: dict = {}  # open sessions' first arrivals (ns)
        self._fits = self._fit_checks()
        self._limits = sorted({lim for p in self.pools
                               if (lim := p.spec.scheduler.max_model_len) is not None})  # fmt: skip
        cap = e.spec.scheduler.max_waiting  # arrivals only: a hand-off is not rejected
        self._max_waiting = cap if cap is not None else float("inf")
        self._last_arrival_ns = 0

    def _finisher(self, pool: Pool, index: int):
        def done(seq, now_ns) -> bool:
            job_ns = self._turn_done(seq.req, now_ns)
            self.recorder.finished(seq, index, now_ns, job_ns)
            self._on_done(len(self.recorder))
            return job_ns < 0 and seq.req.session is not None  # its session goes on

        return done

    def _turn_done(self, req, now_ns: int) -> int:
        """A request finished or was dropped: release its session's next turn ``think_s`` later
        (S5), or, if it ended its session, return the session's latency (first arrival to this
        end); -1 otherwise."""
        follow = self.workload.on_finish(req)
        if follow is not None:
            t = now_ns + round(follow.think_s * 1e9)
            _at(self.env, t, lambda _ev: self._arrive(follow, chained=False))
            return -1
        if req.session is None:
            return -1
        return now_ns - self._session_start.pop(req.session)

    def _fit_checks(self) -> list[tuple]:
        """Per pool a request passes through, what ``_drop_reason`` checks (read once)."""
        consumer_prefills = self.handoff is not None and not self.handoff.codec.plan(1).kv
        out = []
        for pool in self.pools:
            sc = pool.spec.scheduler
            what = "a replica" if pool.role == "unified" else f"a {pool.role} replica"
            out.append((
                pool.model.max_position, pool.spec.cache.block_size, pool.role == "prefill",
                pool.model.attention is None, 2 * pool.state_blocks, pool.capacity, what,
                pool.role != "decode" or consumer_prefills, sc.enable_chunked_prefill,
                sc.max_num_batched_tokens, sc.watermark, pool.chunk_tokens, pool.watermark_blocks,
            ))  # fmt: skip
        return out

    def _drop_reason(self, req) -> str | None:
        """Why a request can never be served (one line), or None. Every pool it passes through
        must be able to hold it: a unified or decode replica its prompt and every generated token
        but the last, a prefill replica its prompt."""
        total = req.prompt_tokens + req.output_tokens
        for limit in self._limits:
            if total > limit:
                return f"longer than max_model_len ({limit} tokens)"
        for max_position, *_ in self._fits:
            if total > max_position:
                return f"longer than the model's context ({max_position} tokens)"
        for (_, bt, prefill, kv_free, states, capacity, what, computes_prompt, chunked,
             budget, watermark, chunk_tokens, watermark_blocks) in self._fits:  # fmt: skip
            if req.blocks and req.unit_tokens % bt:
                raise KvsimError(
                    f"{self._source()}: request {req.id}: content unit of {req.unit_tokens} "
                    f"tokens is not a multiple of cache.block_size {bt}; use a block_size that "
                    "divides it"
                )
            # The KV a request ever holds: its prompt and every generated token but the last
            # (whose KV is never computed). Nodes cache full blocks only, so this is exact. A
            # recurrent model's sequence also holds its live state and, while storing one, a
            # checkpoint. A prefill replica holds the prompt only.
            kv = 0 if kv_free else -(-(req.prompt_tokens if prefill else total - 1) // bt)
            if kv + states > capacity:
                return f"needs more KV blocks than {what} has ({capacity})"
            if not computes_prompt:
                continue
            if not chunked and req.prompt_tokens > budget:
                return "prompt exceeds max_num_batched_tokens with chunked prefill disabled"
            if watermark:
                chunk = min(req.prompt_tokens, budget, chunk_tokens)
                if -(-chunk // bt) + watermark_blocks > capacity:
                    return "its first chunk does not fit beside the scheduler's watermark"
        return None

    def _source(self) -> str:
        w = self.scenario.workload
        return str(self.scenario.trace_path()) if isinstance(w, TraceWorkload) else "workload"

    def _next_arrival(self) -> None:
        """Schedule the next open-loop arrival (one pending at a time: constant memory)."""
        req = self.workload.next()
        if req is None:
            return
        t_s = req.arrival_s * self._scale / 1e9
        if not t_s < MAX_TIME_NS / 1e9:
            raise KvsimError(
                f"{self._source()}: request {req.id} arrives at {t_s:.3g} s (after "
                f"workload.rate_scale); simulated time ends at {MAX_TIME_NS / 1e9:.3g} s"
            )
        t = max(self.env.now, round(req.arrival_s * self._scale))
        _at(self.env, t, lambda _ev: self._arrive(req))

    def _arrive(self, req, chained: bool = True) -> None:
        """``req`` reaches the cluster now; ``chained``: it is the open-loop stream's, whose next
        arrival is scheduled now (a session's later turn is released by a finish instead)."""
        now = self.env.now
        self._last_arrival_ns = now
        if req.session is not None and req.turn == 0:
            self._session_start[req.session] = now
        reason = self._drop_reason(req)
        if reason is not None:
            job_ns = self._turn_done(req, now)
            self.recorder.drop(req, now, reason, job_ns)
            self._on_done(len(self.recorder))
        else:
            replica = self.entry.choose(req, now)
            if replica.num_waiting >= self._max_waiting:
                self.recorder.drop(req, now, QUEUE_FULL, self._turn_done(req, now))
                self._on_done(len(self.recorder))
            else:
                # NOTE: the record that follows a request across replicas; with one unified
                # pool the replica's sequence is the whole story (and the hot path skips it).
                rec = RequestRecord(now) if self.handoff is not None else None
                replica.submit(Seq(req, now, rec))
        if chained:
            self._next_arrival()

    def check_workload(self, rows: int) -> int:
        """Read the workload's first ``rows`` requests and check them as arrivals are checked,
        without simulating (``kvsim validate``); returns how many were read."""
        n = 0
        for req in itertools.islice(workload_requests(self.scenario), rows):
            self._drop_reason(req)
            n += 1
        return n

    def _latency_notes(self) -> dict:
        if self.latency.name != "profile":
            return {"latency_calibrated": False}
        return {
            "latency_calibrated": True,
            "latency_profile": str(self.scenario.latency.path),
            "latency_extrapolated": self.latency.extrapolated(),
            "latency_fallback_ops": self.latency.fallback_ops,
        }

    def run(self) -> Results:
        self._next_arrival()
        series = QueueSeries(self.replicas)
        series.run(self.env)  # env.run(), sampling the queues on the way
        unfinished = sum(r.scheduler.has_work() for r in self.replicas)
        if unfinished:
            raise RuntimeError("simulation ended with requests still in flight")
        # NOTE: not env.now: a fast-forwarded run cut by an arrival leaves its first timeout
        # pending, a no-op that fires after the run's true end and moves SimPy's clock.
        span = max([self._last_arrival_ns] + [r.last_boundary_ns for r in self.replicas])
        gpus = sum(p.spec.replicas * p.spec.tensor_parallel for p in self.pools)
        files = sorted({f for p in self.pools if (f := self.scenario.gpu_file(p.spec.hardware))})
        extra = {
            "gpus": gpus,
            "kv_blocks_per_replica": self.capacity,
            "evictions": sum(r.scheduler.cache.evictions for r in self.replicas),
            "iterations": sum(r.iterations for r in self.replicas),
            # Share of the simulated span the replicas spent running iterations (any batch,
            # however small: not headroom; utilisation below is).
            "busy_fraction": sum(r.busy_ns for r in self.replicas)
            / max(1, len(self.replicas) * span),
            "latency_model": self.latency.describe(),
            **({"hardware_file": ", ".join(files)} if files else {}),
            **self._latency_notes(),
            **self._checkpoint_notes(span),
            **usage_summary(
                self.replicas,
                span,
                self.recorder.per_replica,
                series.kv_use(),
                [(p.name, p.role) for p in self.pools for _ in p.replicas]
                if self.handoff
                else None,
            ),  # fmt: skip
        }
        info = {"scenario": self.scenario.name, "extra": extra}
        tiers = [p for p in self.pools if p.cpu_blocks]
        if tiers:
            info["cpu_tier"] = tiers[0].cpu_summary(span) if len(tiers) == 1 else {
                p.name: p.cpu_summary(span) for p in tiers
            }  # fmt: skip
        if self.handoff is not None:
            extra["pools"] = {p.name: self._pool_summary(p, span) for p in self.pools}
            extra["links"] = self.handoff.link_summary(span)
            info["transfer"] = self.handoff.info()
        results = Results(self.recorder, info)
        results.timeseries = series
        results.link_series = self._link_series(span)
        return results

    def _checkpoint_notes(self, now: int) -> dict:
        """Recurrent models: the checkpoints stored and the memory they held (decimal GB, all
        replicas; a checkpoint is one sequence's state over all its tensor-parallel ranks)."""
        if not self.entry.state_blocks:
            return {}
        trees = [r.scheduler.cache.tree for r in self.replicas]
        gb = self.model.state_bytes / 1e9
        return {
            "checkpoints": {
                "stored": sum(t.states_stored for t in trees),
                "resident_end": sum(len(t.states) for t in trees),
                "gb_end": gb * sum(len(t.states) for t in trees),
                "gb_mean": gb * sum(t.state_seconds(now) for t in trees) / (now / 1e9)
                if now
                else 0.0,
                "gb_peak": gb * sum(t.states_peak for t in trees),
                "state_bytes": self.model.state_bytes,
            }
        }

    def _pool_summary(self, pool: Pool, span: int) -> dict:
        reps = pool.replicas
        return {
            "role": pool.role,
            "model": pool.model.name,
            "hardware": pool.gpu.name,
            "replicas": len(reps),
            "tensor_parallel": pool.spec.tensor_parallel,
            "kv_blocks_per_replica": pool.capacity,
            "evictions": sum(r.scheduler.cache.evictions for r in reps),
            "iterations": sum(r.iterations for r in reps),
            "busy_fraction": sum(r.busy_ns for r in reps) / max(1, len(reps) * span),
        }

    def _link_series(self, span: int) -> dict:
        """Busy fraction over time of each link (its instances' mean), for the report: the
        hand-off's link, and each pool's PCIe directions to its CPU tiers."""
        groups = {}
        if self.handoff is not None:
            groups[self.handoff.link_config.label] = list(self.handoff.links.values())
        for p in self.pools:
            if p.cpu_blocks:
                for d in ("h2d", "d2h"):
                    name = f"pcie {d}" if len(self.pools) == 1 else f"{p.name} pcie {d}"
                    groups[name] = [getattr(r.scheduler.cache.cpu, d) for r in p.replicas]
        out = {}
        for name, links in groups.items():
            width = max(link.series.width_ns for link in links)
            while span > width * len(links[0].series.busy):  # at most as many bins as one has
                width *= 2
            total = None
            for link in links:
                starts, frac = link.series.fractions(span, width)
                total = frac if total is None else [a + b for a, b in zip(total, frac, strict=True)]
            out[name] = (starts, [x / len(links) for x in total])
        return out


def simulate(scenario: Scenario, on_done: Callable[[int], None] | None = None) -> Results:
    """Run a scenario to completion and return its results."""
    try:
        return Cluster(scenario, on_done).run()
    except TraceError as e:
        raise KvsimError(str(e)) from None
