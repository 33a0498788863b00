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

from .cache import KVCache
from .catalog import GpuSpec, ModelSpec, get_gpu, get_model
from .errors import KvsimError
from .latency import IterationPricer, RooflineModel
from .latency.profile import load_profile
from .metrics import Recorder, Results
from .policies import EVICTION, ROUTING
from .policies.eviction import EvictionContext
from .policies.routing import choose
from .replica import Replica
from .scenario import Scenario, SyntheticWorkload, TraceWorkload
from .scheduler import Scheduler, Seq
from .timeseries import MAX_TIME_NS, QueueSeries

GIB = 1 << 30
QUEUE_FULL = "rejected: queue full"


def check_fits(scenario: Scenario, model: ModelSpec, gpu: GpuSpec) -> None:
    """One line if the model's weights (every expert) do not fit on the GPUs given."""
    cache, tp = scenario.cache, scenario.cluster.tensor_parallel
    usable = gpu.memory_gib * GIB * cache.gpu_memory_utilization
    if model.weight_bytes / tp > usable:
        raise KvsimError(
            f"model: {model.name} does not fit: {model.weight_bytes / tp / GIB:.1f} GiB of weights "
            f"per GPU at tensor_parallel {tp}, but {gpu.name} × gpu_memory_utilization "
            f"{cache.gpu_memory_utilization} leaves {usable / GIB:.1f} GiB; raise "
            "cluster.tensor_parallel"
        )


def kv_capacity_blocks(scenario: Scenario, model: ModelSpec, gpu: GpuSpec) -> int:
    """KV blocks per replica: explicit, or sized as vLLM does (GPU memory × utilization −
    weights − activation reserve, divided by the bytes of one block)."""
    check_fits(scenario, model, gpu)
    cache, tp = scenario.cache, scenario.cluster.tensor_parallel
    if cache.num_gpu_blocks != "auto":
        return int(cache.num_gpu_blocks)
    sched = scenario.scheduler
    b = model.dtype_bytes
    # Peak activations of the largest batch (QKV, MLP intermediate, residual) plus fp32 logits.
    width = 2 * model.hidden
    if model.attention is not None:
        width += max(1, model.heads // tp) * model.head_dim + model.kv_dim(tp)
    if model.mlp is not None:
        width += 2 * model.intermediate // tp
    if model.moe is not None:
        width += 2 * model.moe.top_k * model.moe.intermediate // tp
    act = sched.max_num_batched_tokens * b * width
    act += sched.max_num_seqs * (model.vocab // tp) * 4
    per_gpu = (
        gpu.memory_gib * GIB * cache.gpu_memory_utilization
        - model.weight_bytes / tp
        - gpu.activation_reserve_gib * GIB
        - act
    )
    block_bytes = cache.block_size * model.kv_bytes_per_token_rank(tp)
    blocks = int(per_gpu // block_bytes)
    if blocks < 1:
        raise KvsimError(
            f"cache.num_gpu_blocks: auto leaves no memory for the KV cache: {model.name} on "
            f"{tp}× {gpu.name} at gpu_memory_utilization {cache.gpu_memory_utilization}; "
            "raise cluster.tensor_parallel or gpu_memory_utilization"
        )
    return blocks


def workload_requests(scenario: Scenario) -> Iterator:
    """The scenario's request stream (lazy)."""
    from kvsim.traces import read_trace
    from kvsim.traces.generators import LengthDist, synthetic_requests

    w = scenario.workload
    if isinstance(w, SyntheticWorkload):

        def dist(spec) -> LengthDist:
            if spec.type == "fixed":
                return LengthDist("fixed", value=spec.value)
            if spec.type == "uniform":
                return LengthDist("uniform", low=spec.low, high=spec.high)
            return LengthDist(
                "lognormal",
                median=spec.median,
                sigma=spec.sigma,
                minimum=spec.min,
                maximum=spec.max,
            )

        sp = w.shared_prefix
        stream = synthetic_requests(
            w.requests,
            w.rate,
            dist(w.prompt_tokens),
            dist(w.output_tokens),
            arrival=w.arrival,
            cv=w.cv,
            prefixes=sp.prefixes if sp else 0,
            prefix_tokens=sp.tokens if sp else 0,
            zipf_s=sp.zipf if sp else 1.0,
            unit_tokens=w.unit_tokens,
            seed=scenario.seed,
        )
    else:
        stream = read_trace(scenario.trace_path(), w.format)
    if w.max_requests is not None:
        stream = itertools.islice(stream, w.max_requests)
    return stream


def expected_requests(scenario: Scenario) -> int | None:
    """How many requests the workload will produce, when that is cheap to know."""
    w = scenario.workload
    if isinstance(w, SyntheticWorkload):
        return min(w.requests, w.max_requests or w.requests)
    if w.max_requests is not None:
        return w.max_requests
    with open(scenario.trace_path(), "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - (1 if w.format in ("azure", "burstgpt") else 0)


def _at(env: simpy.Environment, t_ns: int, callback: Callable) -> None:
    """Run ``callback`` at ``t_ns`` before any ordinary event of that time."""
    ev = simpy.Event(env)
    # NOTE: a pre-triggered event scheduled with URGENT priority: what Timeout does, one
    # priority level up. SimPy has no public constructor for a delayed urgent event.
    ev._ok = True
    ev._value = None
    ev.callbacks.append(callback)
    env.schedule(ev, URGENT, t_ns - env.now)


class Cluster:
    """Replicas, router and the arrival stream on one SimPy environment."""

    def __init__(self, scenario: Scenario, on_done: Callable[[int], None] | None = None):
        self.scenario = scenario
        self.model = get_model(scenario.model, scenario.base_dir)
        self.gpu = get_gpu(scenario.hardware)
        self.env = simpy.Environment()
        self.recorder = Recorder(scenario.slo.ttft_s, scenario.slo.tpot_s)
        self.capacity = kv_capacity_blocks(scenario, self.model, self.gpu)
        self._on_done = on_done or (lambda n: None)
        tp = scenario.cluster.tensor_parallel
        latency = RooflineModel(self.gpu)
        if scenario.latency.type == "profile":
            required = ["gemm", "elementwise", "step_overhead"]
            required += ["attention"] if self.model.attention is not None else []
            required += ["allreduce"] if tp > 1 else []
            latency = load_profile(
                scenario.profile_path(), latency, scenario.latency.fallback == "roofline", required
            )
        self.latency = latency
        sc, cc = scenario.scheduler, scenario.cache
        self.replicas: list[Replica] = []
        # NOTE: one pricer for all replicas of the same model, GPU and TP: its memo tables are
        # pure functions of the shape, so they are filled once, not once per replica.
        pricer = IterationPricer(self.model, tp, latency)
        for i in range(scenario.cluster.replicas):
            context = EvictionContext(cc.block_size, cc.layout, self.model, pricer.recompute_s)
            policy = EVICTION.create(cc.eviction.type, context, **cc.eviction.params)
            cache = KVCache(
                self.capacity,
                cc.block_size,
                policy,
                layout=cc.layout,
                prefix_caching=cc.enable_prefix_caching,
                recompute_s=pricer.recompute_s,
            )
            sched = Scheduler(
                cache,
                sc.max_num_batched_tokens,
                sc.max_num_seqs,
                sc.chunk_tokens or sc.max_num_batched_tokens,
                sc.enable_chunked_prefill,
                on_finish=self._finisher(i),
            )
            self.replicas.append(
                Replica(self.env, i, sched, pricer, scenario.simulation.exact_steps)
            )
        self.router = ROUTING.create(scenario.routing.type, **scenario.routing.params)
        self._router_reads_cache = getattr(self.router, "reads_cache", False)
        self._stream = workload_requests(scenario)
        self._scale = 1e9 / scenario.workload.rate_scale
        self._max_waiting = sc.max_waiting if sc.max_waiting is not None else float("inf")

    def _finisher(self, index: int):
        def done(seq, now_ns):
            self.recorder.finished(seq, index, now_ns)
            self._on_done(len(self.recorder))

        return done

    def _drop_reason(self, req) -> str | None:
        total = req.prompt_tokens + req.output_tokens
        if total > self.model.max_position:
            return f"longer than the model's context ({self.model.max_position} tokens)"
        bt = self.scenario.cache.block_size
        if req.blocks and req.unit_tokens % bt:
            raise KvsimError(
                f"{self._source()}: request {req.id}: content unit of {req.unit_tokens} tokens is "
                f"not a multiple of cache.block_size {bt}; use a block_size that divides it"
            )
        # The KV a request ever holds: its prompt and every generated token but the last (whose
        # KV is never computed). Nodes cache full blocks only, so this is exact.
        if -(-(total - 1) // bt) > self.capacity:
            return f"needs more KV blocks than a replica has ({self.capacity})"
        sc = self.scenario.scheduler
        if not sc.enable_chunked_prefill and req.prompt_tokens > sc.max_num_batched_tokens:
            return "prompt exceeds max_num_batched_tokens with chunked prefill disabled"
        return None

    def _source(self) -> str:
        w = self.scenario.workload
        return str(self.scenario.trace_path()) if isinstance(w, TraceWorkload) else "workload"

    def _next_arrival(self) -> None:
        req = next(self._stream, None)
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

    def _arrive(self, req) -> None:
        now = self.env.now
        reason = self._drop_reason(req)
        if reason is not None:
            self.recorder.drop(req, now, reason)
            self._on_done(len(self.recorder))
        else:
            if self._router_reads_cache:
                for r in self.replicas:
                    r.sync(now)
            idx = choose(self.router, req, self.replicas)
            if self.replicas[idx].num_waiting >= self._max_waiting:
                self.recorder.drop(req, now, QUEUE_FULL)
                self._on_done(len(self.recorder))
            else:
                self.replicas[idx].submit(Seq(req, now))
        self._next_arrival()

    def check_workload(self, rows: int) -> int:
        """Read the workload's first ``rows`` requests and check them as arrivals are checked,
        without simulating (``kvsim validate``); returns how many were read."""
        n = 0
        for req in itertools.islice(self._stream, rows):
            self._drop_reason(req)
            n += 1
        return n

    def _latency_notes(self) -> dict:
        if self.latency.name != "profile":
            return {}
        return {
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
        info = {
            "scenario": self.scenario.name,
            "extra": {
                "gpus": self.scenario.cluster.replicas * self.scenario.cluster.tensor_parallel,
                "kv_blocks_per_replica": self.capacity,
                "evictions": sum(r.scheduler.cache.evictions for r in self.replicas),
                "iterations": sum(r.iterations for r in self.replicas),
                # Share of the simulated span the replicas spent running iterations.
                "busy_fraction": sum(r.busy_ns for r in self.replicas)
                / max(1, len(self.replicas) * self.env.now),
                "latency_model": self.latency.name,
                **self._latency_notes(),
            },
        }
        results = Results(self.recorder, info)
        results.timeseries = series
        return results


def simulate(scenario: Scenario, on_done: Callable[[int], None] | None = None) -> Results:
    """Run a scenario to completion and return its results."""
    from kvsim.traces import TraceError

    try:
        return Cluster(scenario, on_done).run()
    except TraceError as e:
        raise KvsimError(str(e)) from None
