"""The analytical roofline latency model: the embedded default where no calibration profile exists.

An op costs max(compute time, memory time) + a launch (Williams et al., "Roofline", CACM 2009),
with rates that depend on the op (every constant is sourced in ``catalog/hardware.yaml``):

- ``gemm``: the output is cut into tiles, which run in waves over the SMs (NVIDIA, "Matrix
  Multiplication Background User's Guide", §2.3 and §3: tile and wave quantization). For each of
  cuBLAS's usual tile shapes T, compute = waves_T × (2·tm·tn·k / (peak per SM × e_T) + τ), with
  e_T = e·(AI_T / AI_128×256)^γ (smaller tiles reuse less data; AI = tm·tn / (tm + tn)) and τ a
  per-tile fixed cost (prologue and epilogue); the best shape wins, as cuBLAS's heuristics pick
  one. Memory = bytes at the measured copy rate; small token counts are memory-bound (weights).
  A GEMM's fixed cost (4.7 µs on an H100) replaces the generic launch. γ, τ and the fixed cost are
  fitted to OpenXLA's measured H100 table (4% median error).
- ``attention``: compute at the measured FlashAttention (causal SDPA) fraction of peak; memory at
  the measured paged-decode fraction of the copy rate, which grows with the number of independent
  KV streams (sequences × KV heads): 0.93·(1 − exp(−streams / 12.5)) on an H100, so a small decode
  batch is latency-bound.
- ``allreduce``: NCCL's own ring cost model (src/graph/tuning.cc): base latency + 2(n−1) per-hop
  latencies + bytes / (bus bandwidth × n / 2(n−1)), the cheapest of the LL, LL128 and Simple
  protocols, with the measured bus bandwidth (at most the per-direction NVLink rate).
- ``copy``: device copies at the measured copy rate (read + write), host copies over PCIe.
- ``step_overhead``: a fixed plus per-sequence CPU time per iteration.
- anything else (elementwise, SSM, codecs, quantization): the plain roofline at peak compute and
  the measured copy rate.
"""

from __future__ import annotations

import math

from ..catalog import GpuSpec
from .ops import AllReduce, Attention, Copy, Gemm, Op, StepOverhead, attention_kv_linear
from .pricer import AttentionPrice

VERSION = 2
# cuBLAS's usual bf16 tile shapes on Hopper, largest (most data reuse) first (NVIDIA's matmul
# guide §2.3); the first sets the reference arithmetic intensity.
GEMM_TILES = ((128, 256), (128, 128), (64, 128), (64, 64))
PCIE_EFFICIENCY = 0.8  # assumption: pinned host copies reach ~80% of the PCIe rate


class RooflineModel:
    """Prices ops from a GPU's datasheet figures and sourced efficiencies."""

    name = "roofline"
    version = VERSION

    def __init__(self, gpu: GpuSpec):
        self.gpu = gpu
        self.peak_flops_per_s = gpu.bf16_tflops * 1e12
        self.bytes_per_s = gpu.hbm_tbyte_per_s * 1e12 * gpu.bandwidth_efficiency
        self.pcie_bytes_per_s = gpu.pcie_gbit_per_s / 8 * 1e9 * PCIE_EFFICIENCY
        self.prefill_flops_per_s = self.peak_flops_per_s * gpu.attention_prefill_efficiency
        sm_flops = self.peak_flops_per_s / gpu.sms
        ref = GEMM_TILES[0][0] * GEMM_TILES[0][1] / sum(GEMM_TILES[0])
        # (tile m, tile n, seconds per unit of k for one tile)
        self._tiles = tuple(
            (tm, tn, 2.0 * tm * tn / (sm_flops * gpu.gemm_efficiency
                                      * (tm * tn / (tm + tn) / ref) ** gpu.gemm_tile_exponent))
            for tm, tn in GEMM_TILES
        )  # fmt: skip
        bus = min(gpu.allreduce_bus_gbyte_per_s, gpu.nvlink_gbit_per_s / 8) * 1e9
        self._nccl = tuple(
            (base * 1e-6, hop * 1e-6, bw)
            for base, hop, bw in zip(
                gpu.nccl_ring_base_latency_us,
                gpu.nccl_ring_hop_latency_us,
                (min(gpu.nccl_ll_max_gbyte_per_s * 1e9, 0.5 * bus), 0.92 * bus, bus),
                strict=True,
            )
        )
        # Ops that are not plain compute/memory kernels, by vocabulary name.
        self._special = {
            "gemm": self._gemm,
            "attention": self._attention,
            "step_overhead": self._step_overhead,
            "allreduce": self._allreduce,
            "copy": self._copy,
        }

    def describe(self) -> str:
        return f"roofline v{VERSION} ({self.gpu.name}, uncalibrated)"

    def price(self, op: Op) -> float:
        """Seconds one op takes on one GPU."""
        special = self._special.get(op.kind)
        if special is not None:
            return special(op)
        compute = op.flops() / self.peak_flops_per_s
        memory = op.bytes() / self.bytes_per_s
        return (compute if compute > memory else memory) + self.gpu.launch_s

    # ---- GEMM ---------------------------------------------------------------------------------
    def gemm_compute_s(self, tokens: float, in_dim: int, out_dim: int) -> float:
        """Compute time of a GEMM: the best tile shape's waves over the SMs."""
        sms, tile_s = self.gpu.sms, self.gpu.gemm_tile_s
        best = math.inf
        for tm, tn, per_k in self._tiles:
            tiles = -(-tokens // tm) * -(-out_dim // tn)
            t = -(-tiles // sms) * (per_k * in_dim + tile_s)
            if t < best:
                best = t
        return best

    def _gemm(self, op: Gemm) -> float:
        compute = self.gemm_compute_s(op.tokens, op.in_dim, op.out_dim)
        memory = op.bytes() / self.bytes_per_s
        return (compute if compute > memory else memory) + self.gpu.gemm_launch_s

    # ---- attention ----------------------------------------------------------------------------
    def decode_bytes_per_s(self, op: Attention) -> float:
        """Rate at which attention reads KV: the measured decode fraction of the copy rate, lower
        when few independent streams (sequences × KV heads) cannot fill the GPU."""
        g = self.gpu
        streams = max(1, op.seqs) * max(1, op.kv_heads)
        eff = g.attention_decode_efficiency * -math.expm1(-streams / g.attention_decode_streams)
        return self.bytes_per_s * eff

    def _attention(self, op: Attention) -> float:
        compute = op.flops() / self.prefill_flops_per_s
        memory = op.bytes() / self.decode_bytes_per_s(op)
        return (compute if compute > memory else memory) + self.gpu.launch_s

    def attention_pricer(self, like: Attention) -> AttentionPrice | None:
        """An :class:`AttentionPrice`: (q_tokens, kv_tokens, qk_pairs, seqs) -> seconds equal, bit
        for bit, to ``price`` of the attention op ``like`` with those four fields (segments do not
        enter the roofline), without building the op; None where a subclass prices attention
        otherwise.

        NOTE: ``rate`` evaluates as ``decode_bytes_per_s`` does, and the price as ``_attention``
        with ``Attention.flops``/``bytes`` does (in the same order), so the floats are identical."""
        if type(self)._attention is not RooflineModel._attention or (
            type(self).decode_bytes_per_s is not RooflineModel.decode_bytes_per_s
        ):
            return None
        kv_heads = max(1, like.kv_heads)
        g = self.gpu
        bytes_per_s = self.bytes_per_s
        efficiency, half_streams = g.attention_decode_efficiency, g.attention_decode_streams

        def rate(seqs: int) -> float:
            streams = max(1, seqs) * kv_heads
            eff = efficiency * -math.expm1(-streams / half_streams)
            return bytes_per_s * eff

        return AttentionPrice(
            like.heads, like.head_dim, like.kv_dim, like.kv_dtype_bytes, like.dtype_bytes,
            self.prefill_flops_per_s, g.launch_s, rate,
        )  # fmt: skip

    def decode_attention_terms(self, op: Attention) -> tuple[float, float, float, float]:
        """(cf, mb, mc, const) with price = max(cf·x, mb·x + mc) + const for attention ops like
        ``op`` whose kv_tokens = qk_pairs = x (pure decode)."""
        a, b, c = attention_kv_linear(op)
        rate = self.decode_bytes_per_s(op)
        return a / self.prefill_flops_per_s, b / rate, c / rate, self.gpu.launch_s

    # ---- the rest -----------------------------------------------------------------------------
    def _step_overhead(self, op: StepOverhead) -> float:
        return self.gpu.step_overhead_s + self.gpu.step_overhead_per_seq_s * op.batch_size

    def _allreduce(self, op: AllReduce) -> float:
        n = op.ranks
        if n <= 1:
            return 0.0
        steps = 2 * (n - 1)
        return min(
            base + steps * hop + op.nbytes * steps / (n * bw) for base, hop, bw in self._nccl
        )

    def _copy(self, op: Copy) -> float:
        if op.path == "d2d":
            return 2.0 * op.nbytes / self.bytes_per_s + self.gpu.launch_s
        return op.nbytes / self.pcie_bytes_per_s + self.gpu.launch_s
