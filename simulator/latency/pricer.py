"""Prices one engine iteration of a replica: the sum of its ops, in integer nanoseconds.

An iteration of a batch with T new tokens costs
    Σ_kinds count · token ops(T) + L_attn · attention(batch) + lm_head and sampling(sampling seqs)
    + step_overhead(seqs) + Σ extra ops,
where the token ops are every layer kind's projections, MLP or experts, elementwise passes and
all-reduces (``ops.token_ops``), and extra ops are what a batch carries besides the forward pass
(transfers' codec work, state copies, loads from a CPU tier: DESIGN §9, S3).
NOTE: the dense part is three dict lookups on the hot path: the token ops by token count, the
LM head by sampling sequences and the step overhead by batch size. Each table is bounded by a
scheduler limit (max_num_batched_tokens, max_num_seqs), so memory does not grow with the trace.
Attention depends on the batch's context lengths, which rarely repeat, so it is priced directly
(one closed-form evaluation); ``attention_s`` memoizes nothing on purpose. A latency model that
offers ``attention_pricer`` (the roofline) prices it without building an op (same floats).

Simulated time is kept in integer nanoseconds so that the sum of many iterations is exact: the
decode fast-forward and exact stepping then add the same integers and agree to the nanosecond.

Pure-decode iterations (``decode_run``): n sequences whose summed context is x read
attention's KV; x grows by n each iteration, everything else stays. Latency models that can say
so (``decode_attention_terms``) price such attention as max(cf·x, mb·x + mc) + const. Where the
memory term wins by a margin the iteration costs an affine function of x, kept in fixed point:

    ns(x) = (X0 + P·x) >> 32    (round half up of α + β·x nanoseconds, α, β from the model)

and a run of k such iterations ends after Σ ns(x0 + n·i), a floor sum computed in O(log) time
(``floor_sum``). Its intermediate end times are materialized only as far as someone asks (an
arrival that cuts the run, a cache lookup), so a long run costs O(1) to plan. Elsewhere (compute
bound, or a latency model without those terms) each iteration is priced on its own. Exact
stepping prices one-iteration runs with the same function, so both modes get the same integers.
A pure-decode iteration's price may differ by 1 ns from ``iteration_ns`` of the same shape (the
fixed-point rounding), which never mixes with it within one mode.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import Final

from ..catalog import ModelSpec
from .ops import StepOverhead, attention_op, lm_head_op, recurrent_ops, sampling_op, token_ops

# NOTE: Final, so the compiled code uses the values (a plain module global is a dict lookup).
NS_PER_S: Final = 1_000_000_000
_FRAC: Final = 32  # fraction bits of the fixed-point decode price
_ONE: Final = 1 << _FRAC
_HALF: Final = 1 << (_FRAC - 1)
# Memory-bound tests: per iteration, and stricter at both ends of a run, which then implies the
# per-iteration test at every iteration in between (both terms are affine in the context).
_POINT_MARGIN: Final = 1.001
_RUN_MARGIN: Final = 1.002
_EAGER: Final = 16  # runs up to this long are materialized at once (cheaper than the floor sum)
_EVERY: Final = 1 << 128
"""``fill``'s bound for all of a run's end times: an int past any of them. An int, not ``math.inf``:
compiled, ``fill`` takes an int, and a float bound would round a time past 2**53 ns."""


class AttentionPrice:
    """Attention's price for an aggregate batch shape under a roofline: the model's attention op
    with these four fields priced bit for bit as the model prices it, without building the op
    (``RooflineModel.attention_pricer`` makes one with the op's constants).

    NOTE: each expression evaluates in the same order as ``Attention.flops``/``bytes`` and the
    roofline's ``_attention``, so the floats are identical. The KV read rate depends only on the
    sequences; ``rate`` (the model's) gives it, memoized here (bounded by max_num_seqs)."""

    def __init__(
        self,
        heads: int,
        head_dim: int,
        kv_dim: int,
        kv_bytes: float,
        q_bytes: float,
        flops_per_s: float,
        launch_s: float,
        rate: Callable[[int], float],
    ):
        self.heads = heads
        self.head_dim = head_dim
        self.kv_dim = kv_dim
        self.kv_bytes = kv_bytes
        self.q_bytes = q_bytes
        self.flops_per_s = flops_per_s
        self.launch_s = launch_s
        self._rate = rate
        self._rates: dict[int, float] = {}

    def price(self, q_tokens: int, kv_tokens: int, qk_pairs: int, seqs: int) -> float:
        rate = self._rates.get(seqs)
        if rate is None:
            rate = self._rates[seqs] = self._rate(seqs)
        heads, head_dim = self.heads, self.head_dim
        compute = 4.0 * heads * head_dim * qk_pairs / self.flops_per_s
        kv = float(kv_tokens * self.kv_dim) * self.kv_bytes
        memory = (kv + 2.0 * q_tokens * heads * head_dim * self.q_bytes) / rate
        return (compute if compute > memory else memory) + self.launch_s


class IterationPricer:
    """Iteration prices for one model on one replica's GPUs under a latency model."""

    def __init__(self, model: ModelSpec, tp: int, latency):
        self.model = model
        self.tp = tp
        self.latency = latency
        self.attention_layers = model.attention_layers
        self.recurrent_layers = model.recurrent.layers if model.recurrent else 0
        self._layers: dict[int, float] = {}  # every layer's token ops, by token count
        self._scan: dict[int, float] = {}  # recurrent scans, by prompt tokens
        self._step: dict[int, float] = {}  # recurrent steps, by decoding sequences
        self._head: dict[int, float] = {}  # LM head, by sequences sampling a token
        self._overhead: dict[int, float] = {}  # step overhead, by batch size
        # A calibration profile counts prices outside its measured ranges; the roofline has none.
        self._check = getattr(latency, "check_range", None)
        self._decode: dict[tuple[int, int], tuple] = {}  # decode constants by (batch, segments)
        self._attention_terms = getattr(latency, "decode_attention_terms", None)
        self._recompute: dict[tuple[int, int], float] = {}  # by (start token, tokens)
        # Attention priced without an op object where the model can (no range checks to make).
        self._attention_fast: AttentionPrice | None = None
        make = getattr(latency, "attention_pricer", None)
        if make is not None and self._check is None and self.attention_layers:
            self._attention_fast = make(attention_op(model, tp, 0, 0, 0, 0, 0))

    def recurrent_s(self, prefill_tokens: int, decodes: int) -> float:
        """Seconds of the recurrent layers' scan over prompt tokens and step over decoding
        sequences (memoized by each)."""
        if not self.recurrent_layers:
            return 0.0
        scan = self._scan.get(prefill_tokens)
        if scan is None:
            ops = recurrent_ops(self.model, self.tp, prefill_tokens, 0)
            scan = self._scan[prefill_tokens] = self.recurrent_layers * self.extra_s(ops)
        step = self._step.get(decodes)
        if step is None:
            ops = recurrent_ops(self.model, self.tp, 0, decodes)
            step = self._step[decodes] = self.recurrent_layers * self.extra_s(ops)
        return scan + step

    def dense_s(self, tokens: int, logits: int, seqs: int, decodes: int = 0) -> float:
        """Seconds of everything but attention for an iteration of ``tokens`` tokens, of which
        ``decodes`` are decoding sequences' (memoized)."""
        s = self._layers.get(tokens)
        if s is None:
            s = self._layers[tokens] = self.layers_s(tokens)
        if self.recurrent_layers:
            s += self.recurrent_s(tokens - decodes, decodes)
        if logits:
            h = self._head.get(logits)
            if h is None:
                ops = (lm_head_op(self.model, self.tp, logits), sampling_op(self.model, logits))
                if self._check is not None:
                    for op in ops:
                        self._check(op)
                h = self._head[logits] = sum(self.latency.price(op) for op in ops)
            s += h
        o = self._overhead.get(seqs)
        if o is None:
            o = self._overhead[seqs] = self.latency.price(StepOverhead(batch_size=seqs))
        return s + o

    def layers_s(self, tokens: int) -> float:
        """Seconds of every layer's token ops for ``tokens`` tokens (not memoized)."""
        ops = token_ops(self.model, self.tp, tokens)
        if self._check is not None:
            for _, op in ops:
                self._check(op)
        price = self.latency.price
        return sum(count * price(op) for count, op in ops)

    def attention_s(
        self, q_tokens: int, kv_tokens: int, qk_pairs: int, seqs: int, segments: int
    ) -> float:
        """Seconds of attention over all attention layers for a batch's aggregate shape."""
        if not self.attention_layers:
            return 0.0
        fast = self._attention_fast
        if fast is not None:
            return self.attention_layers * fast.price(q_tokens, kv_tokens, qk_pairs, seqs)
        op = attention_op(self.model, self.tp, q_tokens, kv_tokens, qk_pairs, seqs, segments)
        if self._check is not None:
            self._check(op)
        return self.attention_layers * self.latency.price(op)

    def extra_s(self, ops) -> float:
        """Seconds of a batch's extra ops (priced once per iteration): ops, or (count, op) pairs
        for an op run ``count`` times (transfer codecs' per-layer work)."""
        price = self.latency.price
        total = 0.0
        for item in ops:
            count, op = item if isinstance(item, tuple) else (1, item)
            if self._check is not None:
                self._check(op)
            total += count * price(op)
        return total

    def iteration_ns(
        self,
        tokens: int,
        logits: int,
        seqs: int,
        kv_tokens: int,
        qk_pairs: int,
        segments: int,
        extra_ops=(),
        decodes: int = 0,
    ) -> int:
        """Nanoseconds of one iteration (at least 1); ``decodes`` of its ``tokens`` are decoding
        sequences' (recurrent layers step them and scan the rest)."""
        s = self.dense_s(tokens, logits, seqs, decodes) + self.attention_s(
            tokens, kv_tokens, qk_pairs, seqs, segments
        )
        if extra_ops:
            s += self.extra_s(extra_ops)
        return max(1, _round(s * NS_PER_S))

    def recompute_s(self, start_token: int, tokens: int) -> float:
        """Seconds that computing ``tokens`` prompt tokens after ``start_token`` tokens of context
        adds to an iteration: their token ops and their attention over the context (one
        sequence, one segment); memoized. This is AsymCache's ΔT of a unit at its position."""
        key = (start_token, tokens)
        s = self._recompute.get(key)
        if s is None:
            end = start_token + tokens
            qk = tokens * start_token + tokens * (tokens + 1) // 2
            layers = self._layers.get(tokens)
            if layers is None:
                layers = self._layers[tokens] = self.layers_s(tokens)
            s = layers + self.recurrent_s(tokens, 0) + self.attention_s(tokens, end, qk, 1, 1)
            self._recompute[key] = s
        return s

    def _decode_terms(self, batch: int, segments: int):
        """Constants of decode iterations of ``batch`` sequences reading ``segments`` KV segments
        in all (memoized by both: a profile may price segments): (fixed seconds, cf, mb, mc,
        const, X0, P), X0 and P None when not affine-capable."""
        t = self._decode.get((batch, segments))
        if t is None:
            fixed = self.dense_s(batch, batch, batch, batch)
            terms = None
            if self.attention_layers and self._attention_terms is not None:
                op = attention_op(self.model, self.tp, batch, 0, 0, batch, segments)
                terms = self._attention_terms(op)
            if not self.attention_layers:
                # No attention: every decode iteration costs the same, an affine run of slope 0.
                x0 = round(fixed * NS_PER_S * _ONE) + _HALF
                t = (fixed, 0.0, 0.0, 0.0, 0.0, x0 if x0 >> _FRAC >= 1 else None, 0)
            elif terms is None:
                t = (fixed, None, None, None, None, None, None)
            else:
                cf, mb, mc, const = terms
                layers = self.attention_layers
                alpha_ns = (fixed + layers * (mc + const)) * NS_PER_S
                x0 = round(alpha_ns * _ONE) + _HALF
                p = round(layers * mb * NS_PER_S * _ONE)
                affine = x0 >> _FRAC >= 1 and p >= 0
                t = (fixed, cf, mb, mc, const, x0 if affine else None, p if affine else None)
            self._decode[(batch, segments)] = t
        return t

    def _decode_ns(self, terms, batch: int, x: int, segments: int) -> int:
        """One pure-decode iteration at summed context x (the definition both modes use)."""
        fixed, cf, mb, mc, const, x0, p = terms
        if cf is None:  # a latency model without decode terms: price the op
            op = attention_op(self.model, self.tp, batch, x, x, batch, segments)
            attn = self.attention_layers * self.latency.price(op)
            return max(1, round((fixed + attn) * NS_PER_S))
        memory = mb * x + mc
        if x0 is not None and cf * x * _POINT_MARGIN <= memory:
            return (x0 + p * x) >> _FRAC
        compute = cf * x
        attn = (compute if compute > memory else memory) + const
        return max(1, round((fixed + self.attention_layers * attn) * NS_PER_S))

    def decode_run(
        self, batch: int, kv_first: int, k: int, start_ns: int, segments: int | None = None
    ) -> IterationRun:
        """The run of ``k`` pure-decode iterations from ``start_ns``: ``batch`` sequences whose
        summed context (tokens read by attention) is ``kv_first`` in the first iteration and grows
        by ``batch`` in each, reading ``segments`` KV segments in all (default: one each)."""
        if segments is None:
            segments = batch
        terms = self._decode_terms(batch, segments)
        last = kv_first + batch * (k - 1)
        if self._check is not None and self.attention_layers:
            for x in {kv_first, last}:
                self._check(attention_op(self.model, self.tp, batch, x, x, batch, segments))
        _, cf, mb, mc, _, x0, p = terms
        if (
            x0 is not None
            and cf * kv_first * _RUN_MARGIN <= mb * kv_first + mc
            and cf * last * _RUN_MARGIN <= mb * last + mc
        ):
            # Memory-bound with a margin at both ends, hence (affine terms) at every iteration
            # in between: the per-iteration test of _decode_ns holds for all of them.
            run = IterationRun(start_ns, k, 0, [], kv_first, batch, x0, p)
            if k <= _EAGER:
                run.fill(_EVERY)
                run.end = run.ends[-1]
            else:
                run.end = start_ns + floor_sum(k, _ONE, batch * p, x0 + kv_first * p)
            return run
        ends, t = [], start_ns
        for i in range(k):
            t += self._decode_ns(terms, batch, kv_first + batch * i, segments)
            ends.append(t)
        return IterationRun(start_ns, k, t, ends)


class IterationRun:
    """The end times of a run of ``k`` iterations from ``start``; ``end`` is the last one.

    A run priced in fixed point materializes its end times lazily (``fill``), as far as
    ``count_before`` needs them; ``x`` is then the context of the next iteration to add."""

    __slots__ = ("start", "k", "end", "ends", "_x", "_step", "_x0", "_p")

    def __init__(
        self,
        start: int,
        k: int,
        end: int,
        ends: list[int],
        x: int = 0,
        step: int = 0,
        x0: int = 0,
        p: int = 0,
    ):
        self.start, self.k, self.end, self.ends = start, k, end, ends
        self._x, self._step, self._x0, self._p = x, step, x0, p

    @staticmethod
    def single(start: int, end: int) -> IterationRun:
        # NOTE: not a classmethod: compiled, ``cls(...)`` is a call into Python.
        return IterationRun(start, 1, end, [end])

    def fill(self, until: int) -> None:
        """Materialize end times up to the first at or after ``until`` (at most k of them)."""
        ends = self.ends
        have = len(ends)
        left = self.k - have
        if left <= 0:
            return
        # NOTE (hot path): the price's numerator x0 + p·x grows by p·step per iteration (the
        # same integers as recomputing it).
        a = self._x0 + self._p * self._x
        dp = self._p * self._step
        if have:
            now = ends[-1]
        else:  # at least the first end (an arrival at the start)
            now = self.start + (a >> _FRAC)
            ends.append(now)
            a += dp
            left -= 1
        while left and now < until:
            now += a >> _FRAC
            ends.append(now)
            a += dp
            left -= 1
        self._x += self._step * (len(ends) - have)

    def count_before(self, t: int) -> int:
        """How many of the run's iterations end before ``t`` (bisect_left over the ends)."""
        if t > self.end:
            return self.k
        ends = self.ends
        if len(ends) < self.k and (not ends or ends[-1] < t):
            self.fill(t)
        return bisect_left(ends, t)

    def cut(self, j: int) -> int:
        """Keep iterations 0..j (materialized by ``count_before``); return the new end."""
        self.k = j + 1
        self.end = self.ends[j]
        return self.end


def _round(x: float) -> int:
    """``round(x)``: the nearest integer, halves to even, as ``float.__round__`` gives it
    (``floor`` is exact and so is ``x - floor(x)``), without the builtin call compiled code
    makes for ``round``. NaN and infinities raise as ``round`` does."""
    f = math.floor(x)
    frac = x - f
    if frac > 0.5 or (frac == 0.5 and f % 2):
        return f + 1
    return f


def floor_sum(n: int, m: int, a: int, b: int) -> int:
    """Σ_{i=0}^{n-1} floor((a·i + b) / m) for n ≥ 0, m ≥ 1, a, b ≥ 0, in O(log m) steps (the
    Euclid-like reduction, e.g. AtCoder Library's floor_sum)."""
    # NOTE: // and % rather than divmod, which compiled code calls as a Python builtin.
    total = 0
    while True:
        if a >= m:
            total += n * (n - 1) // 2 * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        y = a * n + b
        if y < m:
            return total
        n, b = y // m, y % m
        m, a = a, m
