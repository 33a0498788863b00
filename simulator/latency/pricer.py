"""Prices one engine iteration of a replica: the sum of its ops, in integer nanoseconds.

An iteration of a batch with T new tokens over L layers costs
    L · (Σ dense ops(T) + attention(batch)) + lm_head(sampling seqs) + step_overhead(seqs).
NOTE: the dense part depends only on (T, sampling seqs) and is memoized in a dict, so it is one
lookup on the hot path. Attention depends on the batch's context lengths, which rarely repeat, so
it is priced directly (one closed-form evaluation); ``attention_s`` memoizes nothing on purpose.
Runs of pure-decode iterations are priced as numpy arrays in one call (``decode_run_ns``); exact
stepping uses the same function with one iteration, so both modes get the same integers.

Simulated time is kept in integer nanoseconds so that the sum of many iterations is exact: the
decode fast-forward and exact stepping then add the same integers and agree to the nanosecond.
"""

from __future__ import annotations

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
        self._dense: dict[tuple[int, int], float] = {}
        # A calibration profile counts prices outside its measured ranges; the roofline has none.
        self._check = getattr(latency, "check_range", None)

    def dense_s(self, tokens: int, logits: int, seqs: int) -> float:
        """Seconds of everything but attention for an iteration (memoized)."""
        key = (tokens, logits, seqs)
        s = self._dense.get(key)
        if s is None:
            price = self.latency.price
            ops = dense_layer_ops(self.model, self.tp, tokens)
            if logits:
                ops.append(lm_head_op(self.model, self.tp, logits))
            if self._check is not None:
                for op in ops:
                    self._check(op)
            per_layer = sum(price(op) for op in ops[: len(ops) - (1 if logits else 0)])
            s = self.model.layers * per_layer
            if logits:
                s += price(ops[-1])
            s += price(StepOverhead(batch_size=seqs))
            self._dense[key] = s
        return s

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

    def decode_run_ns(self, batch: int, kv_first: int, k: int) -> list[int]:
        """Nanoseconds of ``k`` pure-decode iterations of ``batch`` sequences whose summed context
        (tokens read by attention) is ``kv_first`` in the first and grows by ``batch`` each."""
        if k <= 8:
            # NOTE: for short runs numpy's call overhead dominates; the scalar path performs the
            # same IEEE operations in the same order, so it returns the same integers. One op
            # object is reused and only its context features change.
            dense = self.dense_s(batch, batch, batch)
            op = attention_op(self.model, self.tp, batch, 0, 0, batch, batch)
            price, layers = self.latency.price, self.model.layers
            out = []
            for i in range(k):
                op.kv_tokens = op.qk_pairs = kv_first + batch * i
                if self._check is not None:
                    self._check(op)
                out.append(max(1, round((dense + layers * price(op)) * NS_PER_S)))
            return out
        kv = kv_first + batch * np.arange(k, dtype=np.int64)
        op = attention_op(self.model, self.tp, batch, kv, kv, batch, batch)
        if self._check is not None:
            self._check(op)
        many = getattr(self.latency, "price_many", None)
        if many is not None:
            attn = self.model.layers * many(op)
        else:  # a latency model without a vectorized path: price element by element
            attn = np.array(
                [
                    self.model.layers
                    * self.latency.price(
                        attention_op(self.model, self.tp, batch, int(x), int(x), batch, batch)
                    )
                    for x in kv
                ]
            )
        s = self.dense_s(batch, batch, batch) + attn
        return np.maximum(1, np.rint(s * NS_PER_S)).astype(np.int64).tolist()
