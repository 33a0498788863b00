"""Transfer codecs: how a prompt's state goes from a prefill replica to a decode replica.

DESIGN §5.2. A codec is created as ``Codec(context, **params)`` with a :class:`TransferContext`
(the producer's and consumer's models and tensor-parallel degrees, the producer's KV page) and
answers ``plan(tokens) -> TransferPlan``: the payload bytes on the link, the producer's ops (run
in the iteration that finishes the prefill) and the consumer's ops (run in the iteration that
admits the sequence), as (count, op) pairs from the op vocabulary (``latency/ops.py``), so a
roofline or a calibration profile prices them like every other op. Each codec also carries a
declared :class:`Quality` record: quality is an input, not a simulation.

For T prompt tokens, L attention layers, kv_dim = 2·kv_heads·head_dim and b bytes an element:
- ``raw``: T·L·kv_dim·b bytes, no codec work.
- ``quantized(bits, group=32)`` (KIVI, arXiv 2402.02750, as ``kernels/quant.py`` runs it):
  T·L·kv_dim·bits/8 bytes plus fp32 scale and zero per key channel per page of ``page`` tokens
  and per value group of ``group`` channels per token; ``kv_quant`` on the producer and
  ``kv_dequant`` on the consumer, each layer.
- ``layer_recompute(k)`` (DroidSpeak, arXiv 2411.02820): raw KV of L−k layers plus a hidden
  state (``hidden`` elements a token) for each of k layers; the consumer recomputes k layers.
- ``consumer_prefill`` (the oracle): token ids only (4 bytes a token); the consumer runs the whole
  prefill itself, scheduled like any prompt.
- ``scd(rank_k, rank_v, rank_h, patch_layers=6)`` (Semantic Cache Distillation, arXiv
  2606.07684): T·b·[(L−k)(r_K + r_V) + k·r_H] bytes; ``scd_encode`` of K and V codes on L−k
  layers and of hidden codes on the k patch layers on the producer; ``scd_reuse`` on L−k layers and
  ``scd_patch`` on k layers on the consumer.
- ``scd_reuse_only(rank_k, rank_v)``: ``scd`` with no patch layer.

The SCD ops take K and V together (``kv_dim``) at one rank, as the calibration grid measures
them; different ranks for K and V are two half-counted ops, whose FLOPs add up to K's and V's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

from ..catalog import ModelSpec
from ..errors import KvsimError
from ..latency.ops import KvDequant, KvQuant, ScdEncode, ScdPatch, ScdReuse, decoder_layer_ops
from .registry import Registry

TRANSFER = Registry("transfer", interfaces=({"plan": 1},))

TOKEN_ID_BYTES = 4  # int32 token ids


@dataclass(frozen=True)
class TransferContext:
    """What a codec may know about the pair it connects."""

    producer: ModelSpec
    consumer: ModelSpec
    producer_tp: int = 1
    consumer_tp: int = 1
    page_tokens: int = 16
    """The producer's KV block size (KIVI's key scales are per page)."""

    @property
    def same_model(self) -> bool:
        return self.producer == self.consumer


@dataclass(frozen=True)
class TransferPlan:
    """One request's hand-off: what crosses the link and what each side computes."""

    payload_bytes: int
    producer_ops: tuple = ()
    """(count, op) pairs on one producer GPU, in the iteration that finishes the prefill."""
    consumer_ops: tuple = ()
    """(count, op) pairs on one consumer GPU, in the iteration that admits the sequence."""
    kv: bool = True
    """False: no KV crosses the link; the consumer computes the prompt (consumer_prefill)."""


@dataclass(frozen=True)
class Quality:
    """A codec's declared quality against the oracle (the consumer's own prefill), with its
    source. Numbers are only ever copied from a source; None where none was found."""

    f1_vs_oracle: float | None = None
    """Task F1 over the oracle's F1 (1.0: the same)."""
    kl_vs_oracle: float | None = None
    """KL divergence of the next-token distribution from the oracle's (nats)."""
    perplexity_vs_oracle: float | None = None
    """Perplexity over the oracle's."""
    bound: str | None = None
    """How to read the numbers: "exact", or "at least" (F1) / "at most" (KL, perplexity)."""
    source: str = ""
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _quality(declared: dict | None, default: Quality, codec: str) -> Quality:
    """The user's declared record (``quality:`` parameter), or the codec's own."""
    if declared is None:
        return default
    if not isinstance(declared, dict):
        raise KvsimError(f"transfer codec {codec!r}: quality must be a mapping, got {declared!r}")
    allowed = set(Quality.__dataclass_fields__)
    unknown = sorted(set(declared) - allowed)
    if unknown:
        raise KvsimError(f"transfer codec {codec!r}: quality: unknown key {unknown[0]!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")  # fmt: skip
    if not declared.get("source") or not isinstance(declared["source"], str):
        raise KvsimError(f"transfer codec {codec!r}: quality needs a source (where the numbers "
                         "come from, as text)")  # fmt: skip
    if not isinstance(declared.get("note", ""), str):
        raise KvsimError(f"transfer codec {codec!r}: quality.note must be text")
    if declared.get("bound") not in (None, "exact", "at least", "at most"):
        raise KvsimError(f"transfer codec {codec!r}: quality.bound = {declared['bound']!r}; "
                         "allowed: exact, at least, at most")  # fmt: skip
    for key in ("f1_vs_oracle", "kl_vs_oracle", "perplexity_vs_oracle"):
        v = declared.get(key)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf
        ):
            raise KvsimError(f"transfer codec {codec!r}: quality.{key} = {v!r}; allowed: a "
                             "non-negative number or null")  # fmt: skip
    return Quality(**declared)


def _int(codec: str, name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise KvsimError(f"transfer codec {codec!r}: {name} = {value!r}; allowed: an integer in "
                         f"[{lo}, {hi}]")  # fmt: skip
    return value


class TransferCodec(Protocol):
    quality: Quality

    def plan(self, tokens: int) -> TransferPlan: ...


class _Codec:
    """Shared shapes: L, kv_dim (all ranks and one consumer rank), b, hidden."""

    def __init__(self, context: TransferContext):
        self.ctx = context
        m = context.producer
        self.layers = m.attention_layers
        self.kv_dim = m.kv_dim(1)
        self.b = m.dtype_bytes
        self.kv_b = m.kv_element_bytes
        """Bytes of a KV element as the producer stores it (1: an fp8 KV cache)."""
        self.hidden = m.hidden

    def _raw_bytes(self, tokens: int, layers: int) -> int:
        return tokens * layers * self.kv_dim * self.kv_b


EXACT = Quality(1.0, 0.0, 1.0, "exact", "the consumer's own KV, by construction (DESIGN §5.2)")
MISALIGNED = Quality(
    source="arXiv 2606.07684 (SCD), abstract",
    note="reusing another model's cache 'causes semantic misalignment that accumulates over "
    "layers, degrading generation quality'; no figure found for this pair",
)


@TRANSFER.register("raw")
class Raw(_Codec):
    """The producer's KV as it is: exact between replicas of one model."""

    def __init__(self, context: TransferContext, quality: dict | None = None):
        super().__init__(context)
        self.quality = _quality(quality, EXACT if context.same_model else MISALIGNED, "raw")

    def plan(self, tokens: int) -> TransferPlan:
        return TransferPlan(self._raw_bytes(tokens, self.layers))


@TRANSFER.register("quantized")
class Quantized(_Codec):
    """KIVI-style group-wise quantization: keys per channel over a page, values per token over
    groups of ``group`` channels, an fp32 scale and zero each (``kernels/quant.py``)."""

    def __init__(self, context: TransferContext, bits: int | None = None, group: int = 32,
                 quality: dict | None = None):  # fmt: skip
        super().__init__(context)
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (2, 4, 8):
            raise KvsimError(f"transfer codec 'quantized': bits = {bits!r}; allowed: 2, 4, 8")
        hd = context.producer.head_dim
        if isinstance(group, bool) or not isinstance(group, int) or group < 1 or hd % group:
            raise KvsimError(f"transfer codec 'quantized': group = {group!r}; allowed: a divisor "
                             f"of the head dim {hd}")  # fmt: skip
        self.bits, self.group = bits, group
        self.quality = _quality(quality, Quality(
            source="arXiv 2402.02750 (KIVI), abstract",
            note="2-bit KIVI keeps 'almost the same quality' for Llama, Falcon and Mistral (one "
            "model, no transfer between models); no figure found for this pair",
        ), "quantized")  # fmt: skip

    def plan(self, tokens: int) -> TransferPlan:
        m, ctx = self.ctx.producer, self.ctx
        kvh, hd = m.kv_heads, m.head_dim
        pages = -(-tokens // ctx.page_tokens)
        scales = self.layers * 8 * (pages * kvh * hd + tokens * kvh * (hd // self.group))
        codes = self.layers * tokens * self.kv_dim * self.bits // 8
        kv_p, kv_c = m.kv_dim(ctx.producer_tp), ctx.consumer.kv_dim(ctx.consumer_tp)
        return TransferPlan(
            codes + scales,
            ((self.layers, KvQuant(self.b, tokens, kv_p, self.bits)),),
            ((self.layers, KvDequant(self.b, tokens, kv_c, self.bits)),),
        )


@TRANSFER.register("layer_recompute")
class LayerRecompute(_Codec):
    """DroidSpeak-style: raw KV for L − k layers, a hidden state for each of k layers, which the
    consumer recomputes with its own weights."""

    def __init__(self, context: TransferContext, k: int | None = None,
                 quality: dict | None = None):  # fmt: skip
        super().__init__(context)
        self.k = _int("layer_recompute", "k", k, 0, self.layers)
        self.quality = _quality(quality, Quality(
            source="arXiv 2411.02820v4 (DroidSpeak), abstract",
            note="'negligible loss of quality in F1 scores, Rouge-L or code similarity score' "
            "with its chosen layers; no figure found for this pair and k",
        ), "layer_recompute")  # fmt: skip

    def plan(self, tokens: int) -> TransferPlan:
        k = self.k
        payload = self._raw_bytes(tokens, self.layers - k) + tokens * k * self.hidden * self.b
        ops = decoder_layer_ops(self.ctx.consumer, self.ctx.consumer_tp, tokens, k)
        return TransferPlan(payload, (), tuple(ops))


@TRANSFER.register("consumer_prefill")
class ConsumerPrefill(_Codec):
    """The oracle: token ids cross the link and the consumer prefills the prompt itself."""

    def __init__(self, context: TransferContext, quality: dict | None = None):
        super().__init__(context)
        self.quality = _quality(quality, Quality(
            1.0, 0.0, 1.0, "exact", "the oracle itself: the consumer's own prefill (DESIGN §5.2)"
        ), "consumer_prefill")  # fmt: skip

    def plan(self, tokens: int) -> TransferPlan:
        return TransferPlan(TOKEN_ID_BYTES * tokens, kv=False)


def _pair(op_cls, b: int, tokens: int, width: int, r1: int, r2: int, layers: float) -> tuple:
    """``layers`` ops over K and V at ranks r1 and r2: one op at both when equal, else two ops
    at half count (their FLOPs add up to K's at r1 and V's at r2)."""
    if layers <= 0:
        return ()
    ranks = (r1,) if r1 == r2 else (r1, r2)
    count = layers / len(ranks)
    return tuple((count, op_cls(dtype_bytes=b, tokens=tokens, kv_dim=width, rank=r)) for r in ranks)


@TRANSFER.register("scd")
class Scd(_Codec):
    """Semantic Cache Distillation (arXiv 2606.07684): low-rank codes of K and V reconstructed
    on the consumer (*Reuse*) on most layers, and on ``patch_layers`` transition layers rank-r_H
    codes that an aligner turns into the layer's normalized input, projected by the consumer's own
    weights (*Patch*)."""

    def __init__(self, context: TransferContext, rank_k: int | None = None,
                 rank_v: int | None = None, rank_h: int | None = None, patch_layers: int = 6,
                 quality: dict | None = None, _name: str = "scd"):  # fmt: skip
        super().__init__(context)
        width = context.producer.kv_heads * context.producer.head_dim
        for name, r in (("rank_k", rank_k), ("rank_v", rank_v)):
            _int(_name, name, r, 1, width)
        self.rank_k, self.rank_v = rank_k, rank_v
        self.patch = _int(_name, "patch_layers", patch_layers, 0, self.layers)
        self.rank_h = _int(_name, "rank_h", rank_h, 1, self.hidden) if self.patch else 0
        self.quality = _quality(quality, self._default_quality(), _name)

    def _default_quality(self) -> Quality:
        return Quality(
            f1_vs_oracle=0.95,
            bound="at least",
            source="arXiv 2606.07684 (SCD), abstract",
            note="'keeping generation quality within 5% F1 of the oracle', read as F1 at least "
            "0.95 of the oracle's; the paper's own ranks and pairs, not these",
        )

    def plan(self, tokens: int) -> TransferPlan:
        ctx, k, reuse = self.ctx, self.patch, self.layers - self.patch
        rk, rv, rh = self.rank_k, self.rank_v, self.rank_h
        payload = tokens * self.b * (reuse * (rk + rv) + k * rh)
        kv_p = ctx.producer.kv_dim(ctx.producer_tp)
        kv_c = ctx.consumer.kv_dim(ctx.consumer_tp)
        producer = _pair(ScdEncode, self.b, tokens, kv_p, rk, rv, reuse)
        consumer = _pair(ScdReuse, self.b, tokens, kv_c, rk, rv, reuse)
        if k:
            producer += ((k, ScdEncode(self.b, tokens, self.hidden, rh)),)
            consumer += ((k, ScdPatch(self.b, tokens, rh, ctx.consumer.hidden, kv_c)),)
        return TransferPlan(payload, producer, consumer)


@TRANSFER.register("scd_reuse_only")
class ScdReuseOnly(Scd):
    """SCD's Reuse on every layer, no Patch."""

    def __init__(self, context: TransferContext, rank_k: int | None = None,
                 rank_v: int | None = None, quality: dict | None = None):  # fmt: skip
        super().__init__(context, rank_k, rank_v, None, 0, quality, "scd_reuse_only")

    def _default_quality(self) -> Quality:
        return Quality(
            source="arXiv 2606.07684 (SCD), abstract",
            note="without Patch, errors are not truncated at transition layers; no figure found "
            "for Reuse alone",
        )
