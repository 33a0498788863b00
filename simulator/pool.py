"""A pool: replicas of one role, model and GPU, with their own cache, scheduler and router
(DESIGN §9, S4). A flat ``cluster:`` is one unified pool; a disaggregated cluster is a prefill
pool and a decode pool joined by a link (``handoff.py``).

Capacity is computed per pool (its model, GPU, tensor-parallel degree and memory settings), and
the pool's replicas share one iteration pricer (its tables are pure functions of the shape).
"""

from __future__ import annotations

from .cache import KVCache
from .cache.cpu_tier import CpuTier
from .chunking import AdaptiveChunking
from .latency import IterationPricer, RooflineModel
from .latency.profile import load_profile
from .latency.roofline import PCIE_EFFICIENCY
from .link import Link
from .policies import CHECKPOINT, EVICTION, ROUTING
from .policies.eviction import EvictionContext
from .policies.routing import PrefixAware, choose
from .replica import DecodeReplica, Replica, least_prefill_work
from .scenario import PoolSpec, Scenario
from .scheduler import Scheduler

GIB = 1 << 30


class Pool:
    """The replicas of one pool and the router that picks among them."""

    def __init__(self, env, scenario: Scenario, spec: PoolSpec, on_finish, extra_ops=()):
        """``on_finish(pool, replica index)`` makes each scheduler's finish callback;
        ``extra_ops``: op kinds this pool's iterations may carry besides the forward pass (a
        calibration profile must price them)."""
        from .cluster import (
            check_max_model_len,
            kv_capacity_blocks,
            pool_model,
            state_blocks,
            state_bytes_rank,
        )

        self.spec = spec
        self.name = spec.name
        self.role = spec.role
        self.model = pool_model(scenario, spec)
        self.gpu = scenario.gpu(spec.hardware)
        self.capacity = kv_capacity_blocks(spec, self.model, self.gpu)
        check_max_model_len(spec, self.model, self.capacity)
        tp = spec.tensor_parallel
        latency = RooflineModel(self.gpu)
        if scenario.latency.type == "profile":
            required = ["gemm", "elementwise", "step_overhead"]
            required += ["attention"] if self.model.attention is not None else []
            required += ["allreduce"] if tp > 1 else []
            required += [k for k in extra_ops if k not in required]
            latency = load_profile(
                scenario.profile_path(), latency, scenario.latency.fallback == "roofline", required
            )
        self.latency = latency
        sc, cc = spec.scheduler, spec.cache
        self.watermark_blocks = int(sc.watermark * self.capacity)
        self.chunk_tokens = sc.chunk_tokens or sc.max_num_batched_tokens
        # NOTE: one pricer for all replicas of the pool: its memo tables are pure functions of
        # the shape, so they are filled once, not once per replica.
        self.pricer = pricer = IterationPricer(self.model, tp, latency)
        chunking = None
        if sc.chunking.type == "adaptive":
            ch = sc.chunking
            chunking = AdaptiveChunking(
                pricer, cc.block_size, sc.max_num_batched_tokens, ch.target_s,
                ch.decode_target_s or scenario.slo.tpot_s, ch.queue_tokens, ch.max_target_s,
            )  # fmt: skip
        self.state_blocks = state_blocks(spec, self.model)
        state_bytes = state_bytes_rank(self.model, tp) if self.state_blocks else 0
        self.replicas: list[Replica] = []
        self.cpu_blocks = 0
        """Blocks of each replica's CPU tier (0: none)."""
        ct = cc.cpu_tier
        if ct is not None:
            block_bytes = self.block_bytes()
            self.cpu_blocks = ct.num_blocks or int(ct.size_gib * GIB // (block_bytes * tp))
            self.pcie_gbit_per_s = ct.pcie_gbit_per_s or self.gpu.pcie_gbit_per_s * PCIE_EFFICIENCY
        for i in range(spec.replicas):
            context = EvictionContext(cc.block_size, cc.layout, self.model, pricer.recompute_s)
            policy = EVICTION.create(cc.eviction.type, context, **cc.eviction.params)
            cpu = None
            if ct is not None:
                cpu_policy = EVICTION.create(ct.eviction.type, context, **ct.eviction.params)
                h2d, d2h = (Link(env, f"pcie-{d}", self.pcie_gbit_per_s, ct.latency_s)
                            for d in ("h2d", "d2h"))  # fmt: skip
                cpu = CpuTier(self.cpu_blocks, cpu_policy, block_bytes, h2d, d2h)
            cache = KVCache(
                self.capacity,
                cc.block_size,
                policy,
                layout=cc.layout,
                prefix_caching=cc.enable_prefix_caching,
                recompute_s=pricer.recompute_s,
                state_blocks=self.state_blocks,
                kv_free=self.model.attention is None,
                isolation=cc.isolation,
                cpu=cpu,
            )
            checkpoint = None
            if cc.checkpoint.type != "none":
                checkpoint = CHECKPOINT.create(cc.checkpoint.type, **cc.checkpoint.params)
            sched = Scheduler(
                cache,
                sc.max_num_batched_tokens,
                sc.max_num_seqs,
                self.chunk_tokens,
                sc.enable_chunked_prefill,
                on_finish=on_finish(self, i),
                watermark_blocks=self.watermark_blocks,
                chunking=chunking,
                checkpoint=checkpoint,
                state_bytes=state_bytes,
                capture=cc.checkpoint_capture,
            )
            kind = DecodeReplica if spec.role == "decode" else Replica
            self.replicas.append(kind(env, i, sched, pricer, scenario.simulation.exact_steps))
        self.router = ROUTING.create(spec.routing.type, **spec.routing.params)
        self.router_reads_cache = getattr(self.router, "reads_cache", False)
        self.router_prefix_only = bool(getattr(self.router, "prefix_only", False))
        self.fused_routing = self.FUSED_ROUTING and type(self.router) is PrefixAware
        """``prefix_aware`` itself (not a subclass): ranked by ``replica.least_prefill_work``."""

    def sync_for(self, request, now: int, inclusive: bool = False) -> None:
        """Bring the replicas' caches up to date for the router's reading of ``request`` (only
        those that may hold its prefix, for a ``prefix_only`` router: see policies/routing.py)."""
        if self.router_prefix_only:
            for r in self.replicas:
                r.sync_for_prefix(request, now, inclusive)
        else:
            for r in self.replicas:
                r.sync(now, inclusive)

    FUSED_ROUTING = True
    """Whether ``prefix_aware`` runs as ``least_prefill_work`` (the tests compare both ways)."""

    def choose(self, request, now: int, inclusive: bool = False) -> Replica:
        """The replica the pool's router picks for ``request`` (caches brought up to date first
        when the router reads them; ``inclusive``: from a LATE event, see ``Replica.sync``)."""
        if self.fused_routing:
            return least_prefill_work(self.replicas, request, now, inclusive)
        if self.router_reads_cache:
            self.sync_for(request, now, inclusive)
        return self.replicas[choose(self.router, request, self.replicas)]

    def cpu_summary(self, span_ns: int) -> dict:
        """The CPU tiers' totals (all replicas) for summary.json."""
        tiers = [r.scheduler.cache.cpu for r in self.replicas]
        links = {d: [getattr(t, d) for t in tiers] for d in ("h2d", "d2h")}
        bb = tiers[0].block_bytes
        return {
            "blocks_per_replica": self.cpu_blocks,
            "pcie_gbit_per_s": self.pcie_gbit_per_s,
            "demotions": sum(t.demotions for t in tiers),
            "loads": sum(t.loads for t in tiers),
            "loaded_bytes": sum(t.loaded_blocks for t in tiers) * bb,
            "evictions": sum(t.evictions for t in tiers),
            **{
                f"pcie_{d}_utilisation": sum(x.busy_ns for x in ls) / (len(ls) * span_ns)
                if span_ns > 0 else 0.0
                for d, ls in links.items()
            },
        }  # fmt: skip

    def block_bytes(self) -> int:
        """Bytes of one KV block on one GPU of this pool."""
        return self.spec.cache.block_size * self.model.kv_bytes_per_token_rank(
            self.spec.tensor_parallel
        )
