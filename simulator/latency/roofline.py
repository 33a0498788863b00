"""The analytical roofline latency model: the embedded default where no calibration profile exists.

price(op) = max(flops / achievable FLOP/s, bytes / achievable bytes/s) + launch overhead
(Williams et al., "Roofline", CACM 2009), with achievable rates = datasheet peak × an efficiency
assumption from ``catalog/hardware.yaml``. Two ops are not compute/memory kernels:
``allreduce`` follows the ring algorithm's bus traffic 2(n−1)/n · bytes over NVLink plus a fixed
latency (so small messages see low effective bandwidth, as NCCL does), and ``step_overhead`` is a
fixed plus per-sequence CPU time.
"""

from __future__ import annotations

import numpy as np

from ..catalog import GpuSpec
from .ops import AllReduce, Attention, Copy, Op, StepOverhead, attention_kv_linear


class RooflineModel:
    """Prices ops from a GPU's datasheet figures and efficiency assumptions."""

    name = "roofline"

    def __init__(self, gpu: GpuSpec):
        self.gpu = gpu
        self.flops_per_s = gpu.bf16_tflops * 1e12 * gpu.flops_efficiency
        self.bytes_per_s = gpu.hbm_tbps * 1e12 * gpu.bandwidth_efficiency
        self.nvlink_bytes_per_s = gpu.nvlink_gbps * 1e9 * gpu.bandwidth_efficiency
        self.pcie_bytes_per_s = gpu.pcie_gbps * 1e9 * gpu.bandwidth_efficiency
        # Ops that are not compute/memory kernels, by vocabulary name.
        self._special = {
            "step_overhead": self._step_overhead,
            "allreduce": self._allreduce,
            "copy": self._copy,
        }

    def price(self, op: Op) -> float:
        """Seconds one op takes on one GPU."""
        special = self._special.get(op.kind)
        if special is not None:
            return special(op)
        compute = op.flops() / self.flops_per_s
        memory = op.bytes() / self.bytes_per_s
        return (compute if compute > memory else memory) + self.gpu.launch_s

    def decode_run_ends(
        self, op: Attention, step: int, k: int, fixed_s: float, layers: int, start_ns: int
    ) -> list[int]:
        """End times (ns) of ``k`` iterations from ``start_ns``, iteration i costing
        ``fixed_s + layers · price(op)`` with kv_tokens = qk_pairs = op.kv_tokens + i · step.

        NOTE (hot path): each iteration performs the same IEEE operations in the same order as
        ``price`` (``attention_kv_linear`` is exact), so one call with k iterations returns the
        same integers as k calls with one. When the memory term exceeds the compute term by a
        margin at both ends of the run, it does so at every iteration in between (both are
        affine in the context), and the compute term is skipped.
        """
        a, b, c = attention_kv_linear(op)
        f, bw, launch = self.flops_per_s, self.bytes_per_s, self.gpu.launch_s
        ns_per_s = 1_000_000_000
        x = op.kv_tokens
        last = x + step * (k - 1)
        out = []
        t = start_ns
        if a * x / f * 1.001 < (b * x + c) / bw and a * last / f * 1.001 < (b * last + c) / bw:
            for _ in range(k):
                ns = round((fixed_s + layers * ((b * x + c) / bw + launch)) * ns_per_s)
                t += ns if ns > 1 else 1
                out.append(t)
                x += step
            return out
        for _ in range(k):
            compute = a * x / f
            memory = (b * x + c) / bw
            attn = (compute if compute > memory else memory) + launch
            ns = round((fixed_s + layers * attn) * ns_per_s)
            t += ns if ns > 1 else 1
            out.append(t)
            x += step
        return out

    def _step_overhead(self, op: StepOverhead) -> float:
        return self.gpu.step_overhead_s + self.gpu.step_overhead_per_seq_s * op.batch_size

    def _allreduce(self, op: AllReduce) -> float:
        if op.ranks <= 1:
            return 0.0
        traffic = 2.0 * (op.ranks - 1) / op.ranks * op.nbytes
        return self.gpu.allreduce_latency_s + traffic / self.nvlink_bytes_per_s

    def _copy(self, op: Copy) -> float:
        if op.path == "d2d":
            return 2.0 * op.nbytes / self.bytes_per_s + self.gpu.launch_s
        return op.nbytes / self.pcie_bytes_per_s + self.gpu.launch_s

    def price_many(self, op: Op) -> np.ndarray:
        """Seconds of a compute/memory op whose features are numpy arrays (elementwise).

        NOTE: the same IEEE operations in the same order as ``price``, so an element equals the
        scalar price of the same features exactly.
        """
        compute = op.flops() / self.flops_per_s
        memory = op.bytes() / self.bytes_per_s
        return np.maximum(compute, memory) + self.gpu.launch_s
