"""The hand-off of a sequence from a prefill replica to a decode replica over a link.

DESIGN §9 (S4) and §5.2; the decode side follows vLLM's disaggregated prefill (a KV connector's
external computed tokens: the decode instance allocates blocks for the incoming KV, the request
waits for it, then is scheduled with that KV present). One request's timeline:

1. Its prefill replica P finishes the prompt at a boundary t; the codec's producer ops ran in
   that iteration. P keeps the sequence's blocks.
2. At t, after every engine boundary of t (a LATE event, so that both simulation modes see the
   same pools), the decode pool's router picks a decode replica D, and D reserves the blocks the
   sequence will hold when admitted: its external KV plus the one token it computes (the prompt's
   last, whose logits give the first token — ``first_token: consumer``; or, when P sampled the
   first token — ``producer`` —, that token's KV). If D cannot, the hand-off waits in D's FIFO
   and is retried before each of D's batches (blocks only come free at D's boundaries).
3. The payload goes on the link (``link.py``); it arrives at t' (an URGENT event, like an
   arrival): P gives its blocks back, and D queues the sequence as ready — admitted before new
   prompts, since it holds its blocks — in an iteration that also runs the codec's consumer ops.
   ``consumer_prefill`` sends token ids and reserves nothing: D prefills the prompt itself.

Layer-wise pipelining (``transfer.pipelining``): the consumer rebuilds layer l while layer l + 1
is on the link. With transfer time X, consumer work R and L layers, a two-stage pipeline of L
equal slices ends max(R/L, R − X·(L − 1)/L) after the last byte arrives, so the admitting
iteration runs that share of the consumer ops. *Approximation:* the hidden share is not charged
to the decode replica's iterations that run during the transfer.
"""

from __future__ import annotations

from collections import deque

from .link import LATE, Link, schedule_at
from .policies import TRANSFER
from .policies.transfer import TransferContext
from .pool import Pool
from .scenario import Scenario
from .scheduler import Seq


class _Producer:
    """What one prefill replica's scheduler sees of the hand-off."""

    def __init__(self, handoff: Handoff, index: int):
        self.handoff = handoff
        self.index = index
        self.producer_samples = handoff.producer_samples
        """The prefill replica samples the first token (``first_token: producer``)."""

    def producer_ops(self, seq) -> tuple:
        """The codec's producer ops, run with the prompt's last chunk."""
        return self.handoff.plan(seq.req.prompt_tokens)[0].producer_ops

    def prefill_done(self, seq, now_ns: int) -> None:
        self.handoff.prefill_done(self.index, seq, now_ns)


def make_codec(scenario: Scenario, prefill, decode):
    """The scenario's transfer codec between a prefill and a decode pool (``PoolSpec`` and
    ``ModelSpec`` of each, as (spec, model) pairs)."""
    (p, pm), (d, dm) = prefill, decode
    ctx = TransferContext(pm, dm, p.tensor_parallel, d.tensor_parallel, p.cache.block_size)
    codec = scenario.transfer.codec
    return TRANSFER.create(codec.type, ctx, **codec.params)


class Handoff:
    """Prefill pool → link → decode pool."""

    def __init__(self, env, scenario: Scenario, prefill: Pool, decode: Pool, codec):
        self.env = env
        self.prefill, self.decode = prefill, decode
        t = scenario.transfer
        self.config = t
        self.codec = codec
        self.producer_samples = t.first_token == "producer"
        self.layers = max(1, decode.model.attention_layers)
        cfg = scenario.links[0]
        self.link_config = cfg
        if cfg.scope == "shared":
            keys = [0]
        elif cfg.scope == "producer":
            keys = list(range(len(prefill.replicas)))
        else:
            keys = [
                (p, d) for p in range(len(prefill.replicas)) for d in range(len(decode.replicas))
            ]
        self.links = {
            k: Link(env, cfg.label, cfg.bandwidth_gbit_per_s, cfg.latency_s, cfg.overhead_s)
            for k in keys
        }
        self._pending = [deque() for _ in decode.replicas]
        for d in decode.replicas:
            d.before_schedule = lambda d=d: self._retry(d)
        self._plans: dict[int, tuple] = {}
        for i, r in enumerate(prefill.replicas):
            r.scheduler.handoff = _Producer(self, i)

    def plan(self, tokens: int) -> tuple:
        """(plan, producer codec ns, consumer codec seconds) for a prompt of ``tokens`` tokens."""
        got = self._plans.get(tokens)
        if got is None:
            plan = self.codec.plan(tokens)
            producer_ns = round(self.prefill.pricer.extra_s(plan.producer_ops) * 1e9)
            got = (plan, producer_ns, self.decode.pricer.extra_s(plan.consumer_ops))
            self._plans[tokens] = got
        return got

    def _link(self, p: int, d: int) -> Link:
        scope = self.link_config.scope
        return self.links[0 if scope == "shared" else p if scope == "producer" else (p, d)]

    # ---- the timeline ---------------------------------------------------------------------------
    def prefill_done(self, p: int, seq_p: Seq, now: int) -> None:
        """Prefill replica ``p`` finished ``seq_p``'s prompt at a boundary of ``now``."""
        rec = seq_p.rec
        rec.prefill_done_ns = now
        rec.prefill_replica = p
        rec.left(seq_p)
        schedule_at(self.env, now, lambda _ev: self._start(p, seq_p), LATE)

    def _start(self, p: int, seq_p: Seq) -> None:
        """After the boundaries of the prefill's end: pick a decode replica, queue the hand-off."""
        now = self.env.now
        req, rec = seq_p.req, seq_p.rec
        d = self.decode.choose(req, now, inclusive=True)
        d.routed += 1
        plan, producer_ns, _ = self.plan(req.prompt_tokens)
        rec.payload_bytes = plan.payload_bytes
        rec.producer_codec_ns = producer_ns
        seq = Seq(req, now, rec)
        seq.generated = 1 if self.producer_samples else 0
        seq.first_ns = seq_p.first_ns
        seq.handoff_from = now
        blocks = 0
        if plan.kv:
            ext = req.prompt_tokens - 1 + seq.generated  # the one token left: see the docstring
            seq.external = seq.computed = ext
            seq.num_tokens = ext + 1
            blocks = d.scheduler.cache.blocks_for(ext + 1)
        else:
            seq.num_tokens = req.prompt_tokens + seq.generated
        self._pending[d.index].append((p, seq_p, seq, blocks, plan))
        d.handoffs_waiting += 1
        self._retry(d)

    def _retry(self, d) -> None:
        """Start the hand-offs waiting for decode replica ``d``, in order, while it can reserve
        their blocks."""
        queue = self._pending[d.index]
        if not queue:
            return
        now = self.env.now
        d.sync(now, inclusive=True)
        took = False
        while queue:
            p, seq_p, seq, blocks, plan = queue[0]
            if blocks:
                if not d.scheduler.reserve(seq, blocks, now):
                    break
                took = True
            queue.popleft()
            d.handoffs_waiting -= 1
            rec = seq.rec
            rec.wait_ns = now - rec.prefill_done_ns
            self._link(p, d.index).send(
                plan.payload_bytes, seq.req.id,
                lambda t, item=(p, seq_p, seq, plan, d, now): self._arrived(item, t),
            )  # fmt: skip
        if took:
            d.cut_after(now)  # its free blocks shrank: a fast-forwarded run re-plans

    def _arrived(self, item, t: int) -> None:
        """The payload is through: the prefill replica gives its blocks back, the decode
        replica takes the sequence."""
        p, seq_p, seq, plan, d, sent = item
        rec = seq.rec
        rec.transfer_ns = t - sent
        producer = self.prefill.replicas[p]
        producer.scheduler.sent(seq_p, t)
        producer.wake()
        seq.arrival_ns = t
        if plan.kv:
            _, _, consumer_s = self.plan(seq.req.prompt_tokens)
            share = 1.0
            if self.config.pipelining and consumer_s > 0:
                n = self.layers
                share = max(1 / n, 1 - (rec.transfer_ns / 1e9 / consumer_s) * (n - 1) / n)
            seq.consumer_ops = tuple((c * share, op) for c, op in plan.consumer_ops)
            rec.consumer_codec_ns = round(consumer_s * share * 1e9)
        else:
            rec.consumer_codec_ns = 0
        d.receive(seq, ready=plan.kv)

    # ---- results --------------------------------------------------------------------------------
    def info(self) -> dict:
        """The codec and its declared quality, for summary.json."""
        codec = self.config.codec
        params = {k: v for k, v in codec.params.items() if k != "quality"}
        args = ", ".join(f"{k}={v}" for k, v in params.items())
        return {
            "codec": codec.type,
            "label": f"{codec.type}({args})" if args else codec.type,
            "params": params,
            "first_token": self.config.first_token,
            "pipelining": self.config.pipelining,
            "quality": self.codec.quality.as_dict(),
        }

    def link_summary(self, span_ns: int) -> dict:
        """The link's totals over its instances (one per producer replica, pair, or shared)."""
        links = list(self.links.values())
        busy = sum(x.busy_ns for x in links)
        cfg = self.link_config
        return {
            cfg.label: {
                "producer": cfg.producer,
                "consumer": cfg.consumer,
                "scope": cfg.scope,
                "instances": len(links),
                "bandwidth_gbit_per_s": cfg.bandwidth_gbit_per_s,
                "latency_s": cfg.latency_s,
                "overhead_s": cfg.overhead_s,
                "transfers": sum(x.transfers for x in links),
                "bytes": sum(x.bytes for x in links),
                "busy_s": busy / 1e9,
                "utilisation": busy / (len(links) * span_ns) if span_ns > 0 else 0.0,
            }
        }
