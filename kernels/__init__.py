"""Triton kernels whose measured cost drives kvsim's latency models, with PyTorch references.

Set ``TRITON_INTERPRET=1`` before importing triton to run them on the CPU (tests do this).
"""

from .msa import msa_decode, msa_prefill, msa_reference
from .quant import QuantizedKVCache, dequantize_kv, quantize_kv
from .scd import scd_encode, scd_patch, scd_reuse
from .ssm import ssm_reference, ssm_scan, ssm_step

__all__ = [
    "QuantizedKVCache",
    "dequantize_kv",
    "msa_decode",
    "msa_prefill",
    "msa_reference",
    "quantize_kv",
    "scd_encode",
    "scd_patch",
    "scd_reuse",
    "ssm_reference",
    "ssm_scan",
    "ssm_step",
]
