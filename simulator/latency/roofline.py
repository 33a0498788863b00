"""The analytical roofline latency model: the embedded default where no calibration profile exists.

price(op) = max(flops / achievable FLOP/s, bytes / achievable bytes/s) + launch overhead
(Williams et al., "Roofline", CACM 2009), with achievable rates = datasheet peak × an efficiency
assumption from ``catalog/hardware.yaml``. Two ops are not compute/memory kernels:
``allreduce`` follows the ring algorithm's bus traffic 2(n−1)/n · bytes over NVLink plus a fixed
latency (so small messages see low effective bandwidth, as NCCL does), and ``step_overhead`` is a
fixed plus per-sequence CPU time.
"""

from __future__ import annotations

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

    def decode_attention_terms(self, op: Attention) -> tuple[float, float, float, float]:
        """(cf, mb, mc, const) with price = max(cf·x, mb·x + mc) + const for attention ops like
        ``op`` whose kv_tokens = qk_pairs = x (pure decode)."""
        a, b, c = attention_kv_linear(op)
        return a / self.flops_per_s, b / self.bytes_per_s, c / self.bytes_per_s, self.gpu.launch_s

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
