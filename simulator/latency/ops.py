"""The op vocabulary: everything that costs GPU time, with its FLOP and byte counts.

Kernels implement ops, calibration measures ops, latency models price ops, the simulator emits ops
(DESIGN §2). This module is the only place that says how much work an op is; a latency model turns
that work into seconds. Feature names are the ones calibration profiles are fitted over.

All counts are per GPU (a tensor-parallel rank): callers pass per-rank dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..catalog import ModelSpec, expected_active_experts

STORAGE_FIELDS = frozenset({"dtype_bytes", "kv_dtype_bytes"})
"""Fields that say how values are stored, not how much work an op is: not features (a
calibration measures the device's own dtype)."""


@dataclass(slots=True)
class Op:
    """Base of all ops. ``kind`` is the vocabulary name; ``features()`` the numeric inputs."""

    dtype_bytes: int = 2

    kind = "op"

    def flops(self) -> float:
        return 0.0

    def bytes(self) -> float:
        return 0.0

    def features(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in STORAGE_FIELDS}


@dataclass(slots=True)
class Gemm(Op):
    """tokens × in_dim times in_dim × out_dim (cuBLAS through torch.matmul)."""

    tokens: int = 0
    in_dim: int = 0
    out_dim: int = 0
    kind = "gemm"

    def flops(self) -> float:
        return 2.0 * self.tokens * self.in_dim * self.out_dim

    def bytes(self) -> float:
        t, i, o = self.tokens, self.in_dim, self.out_dim
        return float(t * i + i * o + t * o) * self.dtype_bytes


@dataclass(slots=True)
class Attention(Op):
    """One batched attention launch (the MSA kernel) over a batch's sequences, one layer.

    ``qk_pairs`` is Σ over sequences of attended (query, key) pairs (causal part counted once),
    ``kv_tokens`` Σ of KV tokens read, ``segments`` Σ of contiguous KV segments read.
    ``kv_dim`` is the cached elements per token (2·kv_heads·head_dim; the latent's width for
    multi-head latent attention), ``head_dim`` the per-head width the matmuls run over;
    ``kv_dtype_bytes`` the bytes of a cached element (1 for an fp8 KV cache), queries and outputs
    being ``dtype_bytes``.
    """

    q_tokens: int = 0
    kv_tokens: int = 0
    qk_pairs: int = 0
    seqs: int = 0
    segments: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    kv_dim: int = 0
    kv_dtype_bytes: int = 2
    kind = "attention"

    def flops(self) -> float:
        # QK^T and PV: 2 matmuls of 2 flops per multiply-add.
        return 4.0 * self.heads * self.head_dim * self.qk_pairs

    def bytes(self) -> float:
        kv = float(self.kv_tokens * self.kv_dim) * self.kv_dtype_bytes
        qo = 2.0 * self.q_tokens * self.heads * self.head_dim
        return kv + qo * self.dtype_bytes


@dataclass(slots=True)
class Elementwise(Op):
    """A memory-bound elementwise pass (RMSNorm with its residual add, rotary embedding, SiLU·mul):
    ``tensors`` tensors of ``tokens × width`` elements read or written once each."""

    tokens: int = 0
    width: int = 0
    tensors: int = 2
    kind = "elementwise"

    def flops(self) -> float:
        return 4.0 * self.tokens * self.width

    def bytes(self) -> float:
        return float(self.tokens * self.width * self.tensors * self.dtype_bytes)


@dataclass(slots=True)
class SsmScan(Op):
    """Chunked linear-recurrence scan over a prefill of recurrent layers (state in fp32)."""

    tokens: int = 0
    heads: int = 0
    head_dim: int = 0
    state_dim: int = 0
    kind = "ssm_scan"

    def flops(self) -> float:
        return 6.0 * self.tokens * self.heads * self.head_dim * self.state_dim

    def bytes(self) -> float:
        io = self.tokens * self.heads * (2 * self.head_dim + 2 * self.state_dim) * self.dtype_bytes
        return float(io + 2 * 4 * self.heads * self.head_dim * self.state_dim)


@dataclass(slots=True)
class SsmStep(Op):
    """One decode token's recurrent update for a batch (reads and writes the fp32 state)."""

    batch: int = 0
    heads: int = 0
    head_dim: int = 0
    state_dim: int = 0
    kind = "ssm_step"

    def flops(self) -> float:
        return 4.0 * self.batch * self.heads * self.head_dim * self.state_dim

    def bytes(self) -> float:
        return 2.0 * 4 * self.batch * self.heads * self.head_dim * self.state_dim


@dataclass(slots=True)
class ScdEncode(Op):
    """Producer side of SCD: de-RoPE'd K/V (tokens × kv_dim) times an encoder → codes."""

    tokens: int = 0
    kv_dim: int = 0
    rank: int = 0
    kind = "scd_encode"

    def flops(self) -> float:
        return 2.0 * self.tokens * self.kv_dim * self.rank

    def bytes(self) -> float:
        t, d, r = self.tokens, self.kv_dim, self.rank
        return float(t * d + d * r + t * r) * self.dtype_bytes


@dataclass(slots=True)
class ScdReuse(Op):
    """Consumer side of SCD Reuse: codes × decoder → K/V, re-RoPE, paged write."""

    tokens: int = 0
    rank: int = 0
    kv_dim: int = 0
    kind = "scd_reuse"

    def flops(self) -> float:
        return 2.0 * self.tokens * self.rank * self.kv_dim

    def bytes(self) -> float:
        t, r, d = self.tokens, self.rank, self.kv_dim
        return float(t * r + r * d + t * d) * self.dtype_bytes


@dataclass(slots=True)
class ScdPatch(Op):
    """Consumer side of SCD Patch: aligner (rank → hidden) then K/V projection (hidden → kv_dim)."""

    tokens: int = 0
    rank: int = 0
    hidden: int = 0
    kv_dim: int = 0
    kind = "scd_patch"

    def flops(self) -> float:
        return 2.0 * self.tokens * (self.rank * self.hidden + self.hidden * self.kv_dim)

    def bytes(self) -> float:
        t, r, h, d = self.tokens, self.rank, self.hidden, self.kv_dim
        return float(t * r + r * h + h * d + t * d) * self.dtype_bytes


@dataclass(slots=True)
class KvQuant(Op):
    """Group-wise KV quantization to ``bits``: reads 16-bit KV, writes packed codes and scales."""

    tokens: int = 0
    kv_dim: int = 0
    bits: int = 8
    kind = "kv_quant"

    def flops(self) -> float:
        return 4.0 * self.tokens * self.kv_dim

    def bytes(self) -> float:
        return self.tokens * self.kv_dim * (self.dtype_bytes + self.bits / 8.0)


@dataclass(slots=True)
class KvDequant(KvQuant):
    kind = "kv_dequant"


@dataclass(slots=True)
class Copy(Op):
    """A copy of ``nbytes`` along ``path``: d2d (HBM read+write), d2h or h2d (PCIe)."""

    nbytes: int = 0
    path: str = "d2d"
    kind = "copy"

    def bytes(self) -> float:
        return float(self.nbytes)

    def features(self) -> dict[str, float]:
        return {"nbytes": self.nbytes}


@dataclass(slots=True)
class AllReduce(Op):
    """NCCL all-reduce of ``nbytes`` across ``ranks`` tensor-parallel GPUs."""

    nbytes: int = 0
    ranks: int = 1
    kind = "allreduce"

    def bytes(self) -> float:
        return float(self.nbytes)


@dataclass(slots=True)
class StepOverhead(Op):
    """CPU-side scheduling, input preparation and launch time of one engine iteration."""

    batch_size: int = 0
    kind = "step_overhead"


OP_KINDS = {
    cls.kind: cls
    for cls in (
        Gemm,
        Attention,
        Elementwise,
        SsmScan,
        SsmStep,
        ScdEncode,
        ScdReuse,
        ScdPatch,
        KvQuant,
        KvDequant,
        Copy,
        AllReduce,
        StepOverhead,
    )
}


def token_ops(
    model: ModelSpec, tp: int, tokens: int, final_norm: bool = True
) -> list[tuple[float, Op]]:
    """The token-parallel work of one forward pass over ``tokens`` tokens, as (count, op) pairs:
    every layer kind's projections, MLP or experts, elementwise passes and tensor-parallel
    all-reduces. Attention itself (which depends on the context) and the LM head are priced apart.

    The elementwise passes follow vLLM's fused kernels: per layer component a fused residual add
    + RMSNorm (reads input and residual, writes both: 4 tensors of ``hidden``); rotary embedding
    on the queries and keys of attention layers (read and write); SiLU·mul on the MLP's gate/up
    output (reads 2, writes 1 of ``intermediate``). A mixture-of-experts layer runs, on average,
    ``expected_active_experts`` experts, each over its share of the routed tokens (uniform routing;
    a GEMM per active expert, as a fused-MoE kernel's grouped GEMM does), plus its shared experts
    and the router; expert weights are split over the tensor-parallel ranks. ``final_norm``:
    include the norm after the last layer (a whole forward pass does)."""
    out: list[tuple[float, Op]] = []
    b, h = model.dtype_bytes, model.hidden
    norms = 0
    a = model.attention
    if a is not None:
        n, heads = a.layers, max(1, a.heads // tp)
        if a.is_latent:
            r, rope, nope = a.kv_lora_rank, a.rope_dim, a.head_dim - a.rope_dim
            if a.q_lora_rank:
                out += [(n, Gemm(b, tokens, h, a.q_lora_rank)),
                        (n, Gemm(b, tokens, a.q_lora_rank, heads * a.head_dim))]  # fmt: skip
            else:
                out.append((n, Gemm(b, tokens, h, heads * a.head_dim)))
            out += [
                (n, Gemm(b, tokens, h, r + rope)),  # latent down-projection (replicated)
                (n, Gemm(b, tokens, r, heads * (nope + a.v_head_dim))),  # latent up-projection
                (n, Gemm(b, tokens, heads * a.v_head_dim, h)),  # output projection
                (n, Elementwise(b, tokens, heads * rope + rope, 2)),  # rotary
            ]
        else:
            kvh = max(1, a.kv_heads // tp)
            out += [
                (n, Gemm(b, tokens, h, heads * a.head_dim + kvh * (a.head_dim + a.v_head_dim))),
                (n, Gemm(b, tokens, heads * a.v_head_dim, h)),
                (n, Elementwise(b, tokens, (heads + kvh) * a.head_dim, 2)),  # rotary on q, k
            ]
        norms += n
    if model.mlp is not None:
        n, inter = model.mlp.layers, model.mlp.intermediate // tp
        if model.mlp.gated:
            out += [
                (n, Gemm(b, tokens, h, 2 * inter)),  # gate + up
                (n, Elementwise(b, tokens, inter, 3)),  # SiLU · mul
            ]
        else:
            out += [
                (n, Gemm(b, tokens, h, inter)),  # up
                (n, Elementwise(b, tokens, inter, 2)),  # activation (squared ReLU)
            ]
        out.append((n, Gemm(b, tokens, inter, h)))  # down
        norms += n
    moe = model.moe
    if moe is not None:
        n, inter = moe.layers, max(1, moe.intermediate // tp)
        active = expected_active_experts(moe.experts, moe.top_k, tokens)
        per_expert = -(-tokens * moe.top_k // max(1, round(active)))
        out += [
            (n, Gemm(b, tokens, h, moe.experts)),  # router
            (n * active, Gemm(b, per_expert, h, 2 * inter)),
            (n * active, Gemm(b, per_expert, inter, h)),
            (n, Elementwise(b, tokens * moe.top_k, inter, 3)),
        ]
        if moe.shared_intermediate:
            shared = max(1, moe.shared_intermediate // tp)
            out += [
                (n, Gemm(b, tokens, h, 2 * shared)),
                (n, Elementwise(b, tokens, shared, 3)),
                (n, Gemm(b, tokens, shared, h)),
            ]
        norms += n
    rec = model.recurrent
    if rec is not None:  # heads split over the ranks; the scan or step itself is priced apart
        n, inner = rec.layers, max(1, rec.inner // tp)
        out += [
            (n, Gemm(b, tokens, h, max(1, rec.in_proj // tp))),  # input projection
            (n, Elementwise(b, tokens, max(1, rec.conv_dim // tp), 2)),  # causal conv1d
            (n, Elementwise(b, tokens, inner, 3)),  # gated RMSNorm of the output
            (n, Gemm(b, tokens, inner, h)),  # output projection
        ]
        norms += n
    # residual add + RMSNorm per component (+ the final norm)
    out.append((norms + final_norm, Elementwise(b, tokens, h, 4)))
    if tp > 1:
        # One all-reduce after each tensor-parallel component's row-parallel projection.
        out.append((norms, AllReduce(b, tokens * h * b, tp)))
    return out


def attention_op(
    model: ModelSpec,
    tp: int,
    q_tokens: int,
    kv_tokens: int,
    qk_pairs: int,
    seqs: int,
    segments: int,
) -> Attention:
    """The batched attention op of one attention layer on one rank."""
    a = model.attention
    if a.is_latent:  # absorbed MLA: every head attends over the shared latent (K: r + rope, V: r)
        head_dim = (2 * a.kv_lora_rank + a.rope_dim) // 2
        kv_heads = 1
    else:
        head_dim, kv_heads = a.head_dim, max(1, a.kv_heads // tp)
    return Attention(
        model.dtype_bytes,
        q_tokens,
        kv_tokens,
        qk_pairs,
        seqs,
        segments,
        max(1, a.heads // tp),
        kv_heads,
        head_dim,
        a.kv_dim(tp),
        model.kv_element_bytes,
    )


def attention_kv_linear(op: Attention) -> tuple[float, float, float]:
    """(flops per KV token, bytes per KV token, other bytes) of a decode attention op, where
    qk_pairs = kv_tokens: flops = a·kv and bytes = b·kv + c.

    NOTE: with integer features below 2**53 every product here and in ``flops``/``bytes`` is an
    exact integer in floating point, so a·kv and b·kv + c equal ``op.flops()`` and ``op.bytes()``
    bit for bit; decode runs use this to price an iteration without building an op."""
    a = 4.0 * op.heads * op.head_dim
    b = float(op.kv_dim * op.kv_dtype_bytes)
    c = 2.0 * op.q_tokens * op.heads * op.head_dim * op.dtype_bytes
    return a, b, c


def decoder_layer_ops(
    model: ModelSpec, tp: int, tokens: int, layers: int
) -> list[tuple[float, Op]]:
    """The work of recomputing ``layers`` decoder layers over a ``tokens``-token prompt of one
    sequence (causal attention over itself), as (count, op) pairs: DroidSpeak-style layer
    recomputation (arXiv 2411.02820). Every component kind of the model counts ``layers`` layers;
    no final norm, embedding or LM head. Attention-only models (no recurrent layers)."""
    if layers <= 0:
        return []
    part = {}
    for name in ("attention", "mlp", "moe"):
        comp = getattr(model, name)
        if comp is not None:
            part[name] = replace(comp, layers=layers)
    sub = replace(model, **part)
    out = token_ops(sub, tp, tokens, final_norm=False)
    if model.attention is not None:
        pairs = tokens * (tokens + 1) // 2
        out.append((layers, attention_op(model, tp, tokens, tokens, pairs, 1, 1)))
    return out


def recurrent_ops(model: ModelSpec, tp: int, prefill_tokens: int, decodes: int) -> list[Op]:
    """The recurrent kernel of one recurrent layer on one rank: a chunked scan over the prompt
    tokens of the batch and one step for each decoding sequence (constant in the context)."""
    rec = model.recurrent
    heads = max(1, rec.heads // tp)
    ops: list[Op] = []
    if prefill_tokens:
        ops.append(SsmScan(model.dtype_bytes, prefill_tokens, heads, rec.head_dim, rec.state_dim))
    if decodes:
        ops.append(SsmStep(model.dtype_bytes, decodes, heads, rec.head_dim, rec.state_dim))
    return ops


def lm_head_op(model: ModelSpec, tp: int, logits: int) -> Gemm:
    """The vocabulary projection for the sequences that sample a token this iteration."""
    return Gemm(model.dtype_bytes, logits, model.hidden, -(-model.vocab // tp))


def sampling_op(model: ModelSpec, logits: int) -> Elementwise:
    """Sampling over the full vocabulary in fp32, as vLLM's sampler runs it: the logits cast to
    fp32, scaled by the temperature, softmax, and the draw — about 5 passes over
    ``logits × vocab`` fp32 values."""
    return Elementwise(4, logits, model.vocab, 5)
