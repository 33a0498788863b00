"""Prices one engine iteration of a replica: the sum of its ops, in integer nanoseconds.

An iteration of a batch with T new tokens over L layers costs
    L · (Σ dense ops(T) + attention(batch)) + lm_head(sampling seqs) + step_overhead(seqs).
NOTE: the dense part is three dict lookups on the hot path: the per-layer ops by token count, the
LM head by sampling sequences and the step overhead by batch size. Each table is bounded by a
scheduler limit (max_num_batched_tokens, max_num_seqs), so memory does not grow with the trace.
Attention depends on the batch's context lengths, which rarely repeat, so it is priced directly
(one closed-form evaluation); ``attention_s`` memoizes nothing on purpose. A run of pure-decode
iterations is priced in one call (``decode_run_ends``): by the latency model's fused loop where it
has one (the roofline), else op by op or as numpy arrays; exact stepping uses the same function
with one iteration, so both modes get the same integers.

Simulated time is kept in integer nanoseconds so that the sum of many iterations is exact: the
decode fast-forward and exact stepping then add the same integers and agree to the nanosecond.
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np

from ..catalog import ModelSpec
from .ops import StepOverhead, attention_op, dense_layer_ops, lm_head_op

NS_PER_S = 1_000_000_000


class IterationPricer:
    """Iteration prices for one model on one replica's GPUs under a latency model."""

    def __init__(self, model: ModelSpec, tp: int, latency):
        self.model = model
        self.tp = tp
        self.latency = latency
        self._layers: dict[int, float] = {}  # L × per-layer dense ops, by token count
        self._head: dict[int, float] = {}  # LM head, by sequences sampling a token
        self._overhead: dict[int, float] = {}  # step overhead, by batch size
        # A calibration profile counts prices outside its measured ranges; the roofline has none.
        self._check = getattr(latency, "check_range", None)
        self._decode_dense: dict[int, float] = {}  # dense_s(n, n, n), by decode batch size n
        # A latency model may price a whole decode run in one call (the roofline does); range
        # checks need every op, so a profile takes the generic path.
        self._fused = getattr(latency, "decode_run_ends", None) if self._check is None else None

    def dense_s(self, tokens: int, logits: int, seqs: int) -> float:
        """Seconds of everything but attention for an iteration (memoized)."""
        s = self._layers.get(tokens)
        if s is None:
            ops = dense_layer_ops(self.model, self.tp, tokens)
            if self._check is not None:
                for op in ops:
                    self._check(op)
            price = self.latency.price
            s = self._layers[tokens] = self.model.layers * sum(price(op) for op in ops)
        if logits:
            h = self._head.get(logits)
            if h is None:
                op = lm_head_op(self.model, self.tp, logits)
                if self._check is not None:
                    self._check(op)
                h = self._head[logits] = self.latency.price(op)
            s += h
        o = self._overhead.get(seqs)
        if o is None:
            o = self._overhead[seqs] = self.latency.price(StepOverhead(batch_size=seqs))
        return s + o

    def attention_s(
        self, q_tokens: int, kv_tokens: int, qk_pairs: int, seqs: int, segments: int
    ) -> float:
        """Seconds of attention over all layers for a batch's aggregate shape."""
        op = attention_op(self.model, self.tp, q_tokens, kv_tokens, qk_pairs, seqs, segments)
        if self._check is not None:
            self._check(op)
        return self.model.layers * self.latency.price(op)

    def iteration_ns(
        self,
        tokens: int,
        logits: int,
        seqs: int,
        kv_tokens: int,
        qk_pairs: int,
        segments: int,
    ) -> int:
        """Nanoseconds of one iteration (at least 1)."""
        s = self.dense_s(tokens, logits, seqs) + self.attention_s(
            tokens, kv_tokens, qk_pairs, seqs, segments
        )
        return max(1, round(s * NS_PER_S))

    def decode_run_ends(self, batch: int, kv_first: int, k: int, start_ns: int) -> list[int]:
        """End times (ns) of ``k`` pure-decode iterations from ``start_ns``: ``batch`` sequences
        whose summed context (tokens read by attention) is ``kv_first`` in the first iteration and
        grows by ``batch`` in each. Exact stepping calls this with k = 1, so both modes add the
        same integers."""
        dense = self._decode_dense.get(batch)
        if dense is None:
            dense = self._decode_dense[batch] = self.dense_s(batch, batch, batch)
        op = attention_op(self.model, self.tp, batch, kv_first, kv_first, batch, batch)
        if self._fused is not None:
            return self._fused(op, batch, k, dense, self.model.layers, start_ns)
        return list(accumulate(self._decode_durations(op, batch, k, dense), initial=start_ns))[1:]

    def _decode_durations(self, op, batch: int, k: int, dense: float) -> list[int]:
        """Per-iteration nanoseconds of a decode run under a latency model without a fused
        decode-run path (a calibration profile)."""
        layers = self.model.layers
        kv_first = op.kv_tokens
        if k <= 8:
            # NOTE: for short runs numpy's call overhead dominates; the scalar path performs the
            # same IEEE operations in the same order, so it returns the same integers.
            price = self.latency.price
            out = []
            for i in range(k):
                op.kv_tokens = op.qk_pairs = kv_first + batch * i
                if self._check is not None:
                    self._check(op)
                out.append(max(1, round((dense + layers * price(op)) * NS_PER_S)))
            return out
        kv = kv_first + batch * np.arange(k, dtype=np.int64)
        op.kv_tokens = op.qk_pairs = kv
        if self._check is not None:
            self._check(op)
        many = getattr(self.latency, "price_many", None)
        if many is not None:
            attn = layers * many(op)
        else:  # a latency model without a vectorized path: price element by element
            attn = np.array(
                [
                    layers
                    * self.latency.price(
                        attention_op(self.model, self.tp, batch, int(x), int(x), batch, batch)
                    )
                    for x in kv
                ]
            )
        s = dense + attn
        return np.maximum(1, np.rint(s * NS_PER_S)).astype(np.int64).tolist()
