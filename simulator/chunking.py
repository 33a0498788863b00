"""Adaptive chunked prefill: size each iteration's prefill from the latency model (AsymCache,
arXiv 2606.02964, its adaptive chunking scheduler).

A fixed token budget makes an iteration's time depend on what the budget meets: a 8k-token chunk
over a long context can take hundreds of milliseconds, during which every decoding sequence waits
for its next token. The adaptive rule chooses, every iteration, how many prompt tokens to compute
so that the *predicted* iteration time stays near a target:

    target = min(max_target_s, target_s · (1 + queued_tokens / queue_tokens))
    target = min(target, decode_target_s)              while any sequence is decoding
    P      = the largest multiple of the block size, ≤ max_num_batched_tokens − decodes and at
             least one block, with predicted time(decodes, P) ≤ target

so chunks grow with the queue (to drain it) and shrink while latency-sensitive decodes run (an
iteration longer than the TPOT target delays every decoding sequence's next token).
``queued_tokens`` are the prompt tokens waiting or still to prefill. The prediction prices the
batch the scheduler would form: the decodes (their summed context), and P tokens of the oldest
prefilling (or, if none, waiting) sequence at its cursor, through the replica's own pricer. P
then caps the prefill tokens of the batch; the per-request cap ``chunk_tokens`` still applies.
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000


class AdaptiveChunking:
    """The prefill-token budget of the next iteration, from the latency model."""

    def __init__(
        self,
        pricer,
        block_tokens: int,
        max_tokens: int,
        target_s: float,
        decode_target_s: float,
        queue_tokens: int,
        max_target_s: float,
    ):
        self.pricer = pricer
        self.block = block_tokens
        self.max_tokens = max_tokens
        self.target_s = target_s
        self.decode_target_s = decode_target_s
        self.queue_tokens = queue_tokens
        self.max_target_s = max_target_s

    def target(self, decodes: int, queued_tokens: int) -> float:
        """The iteration time to aim at (seconds)."""
        t = min(self.max_target_s, self.target_s * (1 + queued_tokens / self.queue_tokens))
        return min(t, self.decode_target_s) if decodes else t

    def predicted_s(self, decodes: int, dec_kv: int, dec_segments: int, tokens: int,
                    context: int) -> float:  # fmt: skip
        """An iteration of ``decodes`` decodes reading ``dec_kv`` KV tokens plus ``tokens``
        prompt tokens computed after ``context`` tokens of one sequence."""
        p = self.pricer
        seqs = decodes + 1
        kv = dec_kv + context + tokens
        pairs = dec_kv + tokens * context + tokens * (tokens + 1) // 2
        return p.dense_s(decodes + tokens, seqs, seqs, decodes) + p.attention_s(
            decodes + tokens, kv, pairs, seqs, dec_segments + 1
        )

    def budget(self, decodes: int, dec_kv: int, dec_segments: int, queued_tokens: int,
               context: int) -> int:  # fmt: skip
        """The prefill tokens of the next iteration (a multiple of the block size, ≥ 1 block)."""
        target = self.target(decodes, queued_tokens)
        lo, hi = 1, max(1, (self.max_tokens - decodes) // self.block)
        if self.predicted_s(decodes, dec_kv, dec_segments, hi * self.block, context) <= target:
            return hi * self.block
        while lo < hi:  # largest number of blocks whose iteration fits the target
            mid = (lo + hi + 1) // 2
            if self.predicted_s(decodes, dec_kv, dec_segments, mid * self.block, context) <= target:
                lo = mid
            else:
                hi = mid - 1
        return lo * self.block
