"""Utilisation as a capacity planner reads it: how much of the cluster's batch capacity a run used.

"Busy" — the share of time an iteration runs — says little about headroom: continuous batching
keeps a replica iterating on a handful of decodes, so a cluster that could take several times
its load still looks 98% busy. What bounds a replica's throughput is how full its batches are
(vLLM's scheduler budget: ``max_num_batched_tokens`` tokens and ``max_num_seqs`` sequences per
iteration, and the KV blocks to admit more). So kvsim defines, per iteration:

    fill = 1                                   if requests wait that the batch did not take
           max(tokens / max_num_batched_tokens,
               sequences / max_num_seqs)       otherwise

(a waiting request means a bound held — the token budget, the sequence limit, KV blocks, the
watermark — so the batch is as full as it can be). A replica's **utilisation** is its fill
averaged over the simulated time, idle time counting 0; the cluster's is the mean over its
replicas. Near 1 the cluster is saturated (requests queue); at 0.25 batches carry a quarter of
what they could. **Saturated time** is the share of time iterations ran with requests waiting,
and **iterations at the token budget** the share of iterations that scheduled exactly
``max_num_batched_tokens`` tokens (the bound chunked prefill fills first under prefill load).

NOTE (exactness): the time-weighted sums are integers (fill's numerator over
``max_num_batched_tokens × max_num_seqs`` times nanoseconds), so a fast-forwarded run of k
identical decode iterations adds exactly what k exact steps add, and summaries are the same in
both modes.
"""

from __future__ import annotations


class UsageMeter:
    """A replica's iterations, weighted by their time: fill, saturation, token budget."""

    __slots__ = ("max_tokens", "max_seqs", "fill_ns", "saturated_ns", "at_budget", "_fill",
                 "_saturated", "_full")  # fmt: skip

    def __init__(self, max_tokens: int, max_seqs: int):
        self.max_tokens = max_tokens
        """The token budget per iteration (``max_num_batched_tokens``)."""
        self.max_seqs = max_seqs
        """Sequences per iteration at most (``max_num_seqs``)."""
        self.fill_ns = 0
        """Σ fill × duration, in units of 1 / (max_tokens × max_seqs) ns (exact integer)."""
        self.saturated_ns = 0
        """Time spent in iterations that left requests waiting (ns)."""
        self.at_budget = 0
        """Iterations that scheduled exactly the token budget."""
        self._fill = 0
        self._saturated = False
        self._full = False

    def start(self, tokens: int, seqs: int, waiting: bool) -> None:
        """A batch of ``tokens`` tokens over ``seqs`` sequences starts (the same shape repeats
        over a fast-forwarded run); ``waiting``: requests were left in the queue."""
        if waiting:
            self._fill = self.max_tokens * self.max_seqs
        else:
            scale = self.max_tokens * self.max_seqs
            fill = tokens * self.max_seqs
            if seqs * self.max_tokens > fill:
                fill = seqs * self.max_tokens
            self._fill = fill if fill < scale else scale
        self._saturated = waiting
        self._full = tokens >= self.max_tokens

    def end(self, iterations: int, duration_ns: int) -> None:
        """The batch started last ran ``iterations`` iterations in ``duration_ns``."""
        self.fill_ns += self._fill * duration_ns
        if self._saturated:
            self.saturated_ns += duration_ns
        if self._full:
            self.at_budget += iterations

    def utilisation(self, span_ns: int) -> float:
        """Time-weighted batch fill over ``span_ns`` (idle time counts 0)."""
        return self.fill_ns / (self.max_tokens * self.max_seqs * span_ns) if span_ns else 0.0


def usage_summary(
    replicas: list, span_ns: int, finished: dict[int, int], kv: list, pools: list | None = None
) -> dict:
    """Planner figures for summary.json: the cluster's utilisation, saturated time, share of
    iterations at the token budget, KV use, and one entry per replica. ``finished``: requests
    finished per replica index (of the pool that finishes them); ``kv``: per replica (mean, peak)
    share of KV blocks held by sequences, from the sampled series; ``pools``: with a prefill and a
    decode pool, each replica's (pool name, role): its entry names its pool, and a prefill
    replica's requests are those it prefilled and handed off."""
    n = max(1, len(replicas))
    iterations = sum(r.iterations for r in replicas)
    per = []
    for i, (r, (kv_mean, kv_peak)) in enumerate(zip(replicas, kv, strict=True)):
        u = r.usage
        name, role = pools[i] if pools else (None, "unified")
        per.append({
            **({"pool": name} if pools else {}),
            "replica": r.index,
            "requests": r.routed if role == "prefill" else finished.get(r.index, 0),
            "routed": r.routed,
            "iterations": r.iterations,
            "busy_fraction": r.busy_ns / span_ns if span_ns else 0.0,
            "utilisation": u.utilisation(span_ns),
            "saturated_fraction": u.saturated_ns / span_ns if span_ns else 0.0,
            "kv_blocks": r.scheduler.cache.capacity,
            "kv_use_mean": kv_mean,
            "kv_use_peak": kv_peak,
            "evictions": r.scheduler.cache.evictions,
        })  # fmt: skip
    return {
        "utilisation": sum(p["utilisation"] for p in per) / n,
        "saturated_fraction": sum(p["saturated_fraction"] for p in per) / n,
        "iterations_at_token_budget": sum(r.usage.at_budget for r in replicas) / iterations
        if iterations
        else 0.0,
        "kv_use": {
            "mean": sum(p["kv_use_mean"] for p in per) / n,
            "peak": max((p["kv_use_peak"] for p in per), default=0.0),
        },
        "replicas": per,
    }
