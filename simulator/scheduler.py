"""vLLM-like continuous batching with chunked prefill and preemption by recompute (plain Python).

Each iteration (vLLM V1 semantics): every running request in decode gets one token; running
requests still in prefill get their next chunk within the token budget; then waiting requests are
admitted first-come-first-served while the budget, ``max_num_seqs`` and the KV pool allow: a
request is admitted when the blocks of its first chunk can be allocated (V1 allocates for the
tokens scheduled), optionally leaving a watermark of blocks free as vLLM V0's block manager did
(``watermark_blocks``; V1 has none). A request
whose tokens all have KV samples one new token. When a running request cannot get a block, the
newest running request is preempted: its blocks are freed and it is recomputed later (its cached
prefix may still hit). Admission stops for the iteration after any preemption.

NOTE (hot path): all decoding sequences advance by exactly one token per iteration, so they are
kept lazily against a replica-wide iteration counter ``it``: a sequence stores its state at the
iteration it joined (``base_*``), a histogram over (private tokens − it) mod block size says how
many new blocks an iteration needs, and a heap of finish iterations says when one completes. An
iteration, or a run of pure-decode iterations, then costs O(1) per iteration instead of O(batch).
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from .cache import KVCache
from .cache.kv_cache import MSA
from .cache.prefix_tree import Node
from .cache.seen import SeenPrefixes
from .latency.ops import Copy

# NOTE: Final, so the compiled code uses the values (a plain module global is a dict lookup).
WAITING: Final = 0
PREFILL: Final = 1
DECODE: Final = 2
DONE: Final = 3
HANDOFF: Final = 4
LOADING: Final = 5


class Seq:
    """A request's state on one replica, with its token ledger (DESIGN §9, S1).

    Positions 0 … num_tokens−1 are the prompt, then the generated tokens. The ledger says where
    each position's KV comes from (cf. vLLM's ``| comp | new_comp | ext_comp | new |``)::

        | reused | computed | reused  | computed | to compute ........... |
        0        a          b         c          d = computed       num_tokens
                 └─ a hole ─┘                    └─ the cursor

    - *reused*: ranges whose KV the replica's cache had (``reused``; the nodes are held), taken at
      admission — under ``contiguous`` at most one, at the start; under ``msa`` any, holes between;
    - *computed*: KV this replica computed for it, in position order, skipping reused ranges
      (holes, new prompt tokens, then each generated token's KV once it is fed back);
    - *to compute*: the positions at and after the cursor that no reused range covers.
    Every position before the cursor has KV; reused ranges after it are counted in ``ahead``.

    A sequence handed over from a prefill replica arrives with its *external* KV (vLLM's external
    computed tokens): the cursor starts after it, its blocks were reserved when the transfer
    started, and one token is left to compute — the prompt's last (its logits give the first
    token) or, when the prefill replica sampled the first token, that token's KV.
    """

    __slots__ = (
        "req",
        "rec",
        "external",
        "consumer_ops",
        "handoff_from",
        "cpu_hit_units",
        "cpu_nodes",
        "arrival_ns",
        "num_tokens",
        "computed",
        "ahead",
        "reused",
        "next_range",
        "generated",
        "nodes",
        "node_tokens",
        "next_unit",
        "parent",
        "reused_units",
        "priv_blocks",
        "segments",
        "phase",
        "order",
        "first_ns",
        "hit_tokens",
        "hit_units",
        "admitted",
        "admitted_ns",
        "preemptions",
        "recomputed",
        "done_before",
        "state_blocks",
        "pending_state",
        "ckpts",
        "states",
        "base_it",
        "base_c",
        "base_g",
        "hist_key",
        "finish_it",
    )

    def __init__(self, req, arrival_ns: int, rec=None):
        self.req = req
        """The request (trace record)."""
        self.rec = rec
        """Its record across replicas (``recorder.RequestRecord``)."""
        self.external = 0
        """Tokens whose KV it brought from a prefill replica (0 once it computes its own)."""
        self.consumer_ops: Any = ()
        """Codec work its admission runs (reconstructing the external KV), as (count, op)."""
        self.handoff_from = -1
        """When its prefill replica finished the prompt (-1: not handed over, or recorded)."""
        self.cpu_hit_units = 0
        """Units of its first admission's hit found in the CPU tier."""
        self.cpu_nodes: tuple[Node, ...] = ()
        """CPU-tier units it is loading over PCIe (it waits, holding their GPU blocks)."""
        self.arrival_ns = arrival_ns
        """When it reached this replica."""
        self.num_tokens = req.prompt_tokens
        """Prompt plus generated tokens."""
        self.computed = 0
        """The cursor: every position before it has KV (reused or computed)."""
        self.ahead = 0
        """Reused tokens at or after the cursor (msa holes not yet recomputed lie before them)."""
        self.reused: tuple[tuple[int, int], ...] = ()
        """Reused token ranges (start, end), from the cache's Hit at admission."""
        self.next_range = 0
        """Index of the first reused range at or after the cursor."""
        self.generated = 0
        """Tokens sampled so far (the first one is the first token)."""
        self.nodes: list = []
        """Prefix-tree nodes it holds: its reused units, then units it computed and committed."""
        self.node_tokens = 0
        """Tokens in ``nodes``; its private tokens are computed + ahead − node_tokens."""
        self.next_unit = 0
        """The next prompt unit to commit as a node (or to step over, if reused)."""
        self.parent: Node | None = None
        """The node of unit ``next_unit − 1``, parent of the next committed unit."""
        self.reused_units: dict | None = None
        """msa: reused nodes by unit index (the units that commit steps over)."""
        self.priv_blocks = 0
        """Pool blocks of its private tokens (materialized lazily while decoding)."""
        self.segments = 1
        """KV segments its decode reads (see ``_segments``)."""
        self.phase = WAITING
        """WAITING, PREFILL, DECODE or DONE."""
        self.order = -1
        """Admission order on the replica (the newest running is preempted first)."""
        self.first_ns: int | None = None
        """When its first token was sampled."""
        self.hit_tokens = 0
        """Tokens reused at its first admission."""
        self.hit_units = 0
        """Units found resident at its first admission (the prefix-hit ratio counts these)."""
        self.admitted = False
        """Admitted at least once."""
        self.admitted_ns = -1
        """When it was first admitted (arrival to then: its queueing delay); -1 until then."""
        self.preemptions = 0
        """Times it was preempted."""
        self.recomputed = 0
        """Tokens it computed more than once (after preemptions)."""
        self.done_before: list | None = None
        """Ranges it computed in earlier admissions (None until a preemption)."""
        self.state_blocks = 0
        """Recurrent models: blocks of its live state (held while admitted)."""
        self.pending_state = 0
        """Blocks reserved for checkpoints its in-flight chunk ends at."""
        self.ckpts: list[int] = []
        """Checkpoints still to store, as unit counts k (the state after unit k − 1)."""
        self.states: list = []
        """The checkpoints it stored (and, under an isolation cache, the resident ones at its
        placement's positions: its entry holds them until it leaves the cache's window)."""
        # Decoding is kept lazily against the scheduler's iteration counter ``it``:
        self.base_it = 0
        """Iteration at which it joined the decoding set."""
        self.base_c = 0
        """``computed`` at ``base_it`` (it grows by one per iteration since)."""
        self.base_g = 0
        """``generated`` at ``base_it``."""
        self.hist_key = 0
        """Its bucket in the scheduler's block-need histogram: (private tokens − it) mod bs."""
        self.finish_it = 0
        """The iteration that samples its last token."""


class Batch:
    """One iteration's work: every decoding sequence plus prefill chunks ``(seq, tokens)``, the
    aggregate shape attention is priced on, and extra ops priced once (DESIGN §9, S3).

    NOTE: a plain class with its own ``__init__``, not a dataclass: compiled, a dataclass keeps
    the ``__init__`` that ``dataclasses`` generates in Python, one interpreted call per
    iteration."""

    __slots__ = ("decodes", "prefills", "tokens", "logits", "kv_tokens", "qk_pairs", "segments",
                 "preempted", "extra_ops")  # fmt: skip

    def __init__(
        self,
        decodes: int,
        prefills: list,
        tokens: int,
        logits: int,
        kv_tokens: int,
        qk_pairs: int,
        segments: int,
        preempted: bool = False,
        extra_ops: tuple = (),
    ):
        self.decodes = decodes
        self.prefills = prefills
        self.tokens = tokens
        self.logits = logits
        self.kv_tokens = kv_tokens
        self.qk_pairs = qk_pairs
        self.segments = segments
        self.preempted = preempted
        self.extra_ops = extra_ops

    @property
    def seqs(self) -> int:
        return self.decodes + len(self.prefills)


def _min3(a: int, b: int, c: int) -> int:
    """``min(a, b, c)``: compiled, a three-argument ``min`` is a call into Python."""
    m = a if a < b else b
    return m if m < c else c


def _tri(a: int, b: int) -> int:
    """Σ_{p=a}^{b−1} (p + 1): the (query, key) pairs of queries at positions a … b−1 that each
    see every earlier position and themselves."""
    return (b * (b + 1) - a * (a + 1)) // 2


def _segments(reused, num_tokens: int, end: int) -> int:
    """KV segments a sequence's attention reads over positions [0, end).

    The sequence's block table lists its reused blocks first (in position order), then its own
    blocks in the order they are computed (holes and new tokens in position order). A segment is
    a run contiguous both in the table and in position: each reused range, and each run of
    computed positions — except that a computed run right after a single reused prefix continues
    it. So ``contiguous`` always reads 1 segment; an msa hole adds two."""
    segs = 0
    prev = 0
    for a, b in reused:
        if a >= end:
            break
        segs += 1 + (a > prev)  # the reused range, and the hole before it if any
        prev = b
    if prev < min(end, num_tokens):
        segs += 1  # the computed run after the last reused range
    if reused and reused[0][0] == 0 and len(reused) == 1 and segs == 2:
        segs = 1  # a prefix hit and the tail computed after it are one run
    return max(segs, 1)


class Scheduler:
    """Batch formation and KV accounting of one replica, driven by its engine loop.

    It sees the KV cache only through ``lookup``, ``try_allocate``, ``allocate`` (decode blocks
    whose fit it checked), ``commit_unit`` and ``release`` (DESIGN §9, S1)."""

    def __init__(
        self,
        cache: KVCache,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        chunk_tokens: int,
        enable_chunked_prefill: bool,
        on_first_token=None,
        on_finish=None,
        watermark_blocks: int = 0,
        chunking=None,
        checkpoint=None,
        state_bytes: int = 0,
        capture: str = "chunk",
        handoff=None,
    ):
        self.cache = cache
        self.handoff = handoff
        """A prefill replica's hand-off (``handoff.Handoff``): a finished prompt leaves through
        it instead of decoding here (None: a unified or decode replica)."""
        self.bt = cache.block_tokens
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.chunk = chunk_tokens
        self.chunked = enable_chunked_prefill
        self.msa = cache.layout == MSA
        self.watermark = watermark_blocks
        """Blocks admission leaves available (vLLM V0's watermark; V1 reserves none)."""
        self.chunking = chunking
        """Adaptive chunking: sizes each iteration's prefill tokens (None: the fixed budget)."""
        self.sb = cache.state_blocks
        """Blocks of one recurrent state (0: an attention-only model)."""
        self.checkpoint = checkpoint
        """Recurrent models: the checkpoint-placement policy (None: no checkpoints)."""
        self.cut_at_checkpoints = enable_chunked_prefill and capture == "chunk"
        """A chunk ends at the next checkpoint (its final state is the checkpoint); else the
        scan writes out the states of the checkpoints a chunk passes (``capture: scan``)."""
        self.state_copy = Copy(2, state_bytes, "d2d") if state_bytes else None
        """The op that loads or stores one recurrent state."""
        self.seen = SeenPrefixes() if hasattr(checkpoint, "observe") else None
        """Recently seen prefixes, for the overlap depths a learning placement observes."""
        self.on_first_token = on_first_token or (lambda seq, now: None)
        self.on_finish = on_finish or (lambda seq, now: False)
        """Called as a sequence finishes; returns whether its session goes on (a later turn)."""
        self.waiting: deque[Seq] = deque()
        """Sequences not admitted (preempted ones re-queue at the head), FCFS."""
        self.ready: deque[Seq] = deque()
        """Handed-over sequences whose KV has arrived, admitted before ``waiting``: they hold
        their blocks already, so the head of ``waiting`` must not block them."""
        self.incoming: dict[int, Seq] = {}
        """Handed-over sequences whose KV is on its way (blocks reserved), by request id."""
        self.outgoing: dict[int, Seq] = {}
        """Sequences this prefill replica handed off, holding their blocks until the transfer
        completes, by admission order."""
        self.loading: dict[int, Seq] = {}
        """Admitted sequences waiting for CPU-tier units to load, by admission order."""
        self.on_ready: Callable[[], None] = lambda: None
        """Called when a loaded sequence can run (its replica's engine wakes up)."""
        self.prefilling: list[Seq] = []
        """Admitted sequences still computing their prompt, in admission order."""
        self.decoding: dict[int, Seq] = {}
        """Sequences generating tokens, by admission order (kept lazily: see Seq.base_it)."""
        self.it = 0
        """Iterations started so far (the decoding sequences' shared clock)."""
        self.alloc_it = 0
        """Decode iterations whose blocks are allocated (``it``, or ``it + 1`` mid-iteration)."""
        self.hist = [0] * self.bt
        """Decoding sequences by (private tokens − it) mod block size: the bucket that needs a
        new block at iteration ``it`` is ``hist[−it mod block size]``."""
        self.dec_sum = 0
        """Σ computed over decoding sequences at iteration ``it`` (their attention's context)."""
        self.dec_segs = 0
        """Σ KV segments over decoding sequences."""
        self.finish_heap: list[tuple[int, int, Seq]] = []
        """(finish iteration, order, seq) of decoding sequences; stale entries are skipped."""
        self.queued_tokens = 0
        """Prompt tokens still to compute (waiting + prefilling)."""
        self.preemptions = 0
        """Preemptions so far."""
        self.now_ns = 0
        """Simulated time of the boundary being processed."""
        self._order = 0

    # ---- state seen from outside -------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding) + len(self.loading)

    def has_work(self) -> bool:
        return bool(
            self.waiting or self.prefilling or self.decoding or self.ready or self.incoming
            or self.outgoing or self.loading
        )  # fmt: skip

    def add(self, seq: Seq) -> None:
        self.waiting.append(seq)
        self.queued_tokens += seq.num_tokens - seq.computed

    # ---- hand-off between a prefill and a decode replica (DESIGN §9, S4) ---------------------
    def reserve(self, seq: Seq, blocks: int, now_ns: int) -> bool:
        """Take ``blocks`` for a sequence whose KV is about to be sent here (evicting as needed);
        False, changing nothing, when they are not available."""
        if not self.cache.try_allocate(blocks, now_ns):
            return False
        seq.priv_blocks = blocks
        self.incoming[seq.req.id] = seq
        return True

    def arrived(self, seq: Seq) -> None:
        """A reserved sequence's KV is here: it waits to be admitted, ahead of ``waiting``."""
        del self.incoming[seq.req.id]
        self.ready.append(seq)
        self.queued_tokens += seq.num_tokens - seq.computed

    def sent(self, seq: Seq, now_ns: int) -> None:
        """A handed-off sequence's transfer completed: give its blocks back (tail first)."""
        del self.outgoing[seq.order]
        self._release(seq, now_ns)
        seq.phase = DONE

    # ---- decode sequences, kept lazily ---------------------------------------------------------
    def _join_decode(self, s: Seq) -> None:
        s.phase = DECODE
        s.base_it, s.base_c, s.base_g = self.it, s.computed, s.generated
        s.hist_key = (s.computed - s.node_tokens - self.it) % self.bt
        s.finish_it = self.it + s.req.output_tokens - s.generated - 1
        if not self.cache.kv_free:  # (a model without attention needs no blocks to decode)
            self.hist[s.hist_key] += 1
        self.dec_sum += s.computed
        self.dec_segs += s.segments
        self.decoding[s.order] = s
        heapq.heappush(self.finish_heap, (s.finish_it, s.order, s))

    def _leave_decode(self, s: Seq) -> None:
        """Materialize a decoding sequence's state at the current iteration and detach it."""
        d = self.it - s.base_it
        s.computed = s.base_c + d
        s.generated = s.base_g + d
        s.num_tokens = s.req.prompt_tokens + s.generated
        # Blocks were allocated for every iteration before alloc_it, including one in flight.
        held = s.base_c + (self.alloc_it - s.base_it)
        s.priv_blocks = self.cache.blocks_for(held - s.node_tokens)
        if not self.cache.kv_free:
            self.hist[s.hist_key] -= 1
        self.dec_sum -= s.computed
        self.dec_segs -= s.segments
        del self.decoding[s.order]

    def decode_blocks_needed(self, it: int) -> int:
        """New blocks the decoding sequences need at iteration ``it``."""
        return self.hist[-it % self.bt]

    def decode_blocks_between(self, first: int, end: int) -> int:
        """New blocks the decoding sequences need over iterations [first, end).

        NOTE: every block_size iterations each decoding sequence needs exactly one block, so whole
        cycles cost len(decoding) each and only the remainder is summed: O(block_size)."""
        n = end - first
        if n <= 0 or self.cache.kv_free:
            return 0
        bt = self.bt
        cycles, rest = n // bt, n % bt  # not divmod: a Python builtin call, compiled
        total = cycles * len(self.decoding)
        if rest:
            # NOTE (hot path): iterations end − rest … end − 1 read the buckets −it mod bt, i.e.
            # the rest buckets from (1 − end) mod bt upwards (cyclically): summed as slices.
            hist = self.hist
            lo = (1 - end) % bt
            hi = lo + rest
            total += sum(hist[lo:hi]) if hi <= bt else sum(hist[lo:]) + sum(hist[: hi - bt])
        return total

    def decode_iterations_affordable(self, first: int, limit: int, blocks: int) -> int:
        """The largest m <= limit such that iterations [first, first + m) need <= ``blocks``."""
        n_dec = len(self.decoding)
        if n_dec == 0 or self.cache.kv_free:
            return limit
        cycles = min(blocks // n_dec, limit // self.bt)
        m = cycles * self.bt
        used = cycles * n_dec
        hist, bt = self.hist, self.bt
        while m < limit:
            need = hist[-(first + m) % bt]
            if used + need > blocks:
                break
            used += need
            m += 1
        return m

    def next_finish_it(self) -> int | None:
        heap = self.finish_heap
        while heap:
            fit, order, s = heap[0]
            if s.phase == DECODE and s.order == order:
                return fit
            heapq.heappop(heap)
        return None

    # ---- preemption ----------------------------------------------------------------------------
    def _newest_running(self) -> Seq:
        best = -1
        for order in self.decoding:  # NOTE: max() over the keys is a builtin call, compiled
            if order > best:
                best = order
        if self.prefilling and self.prefilling[-1].order > best:
            return self.prefilling[-1]
        return self.decoding[best]

    def _release(self, s: Seq, now_ns: int, pin: bool = False) -> None:
        blocks = s.priv_blocks + s.state_blocks + s.pending_state
        self.cache.release(s.nodes, blocks, now_ns, pin)
        s.nodes, s.node_tokens, s.priv_blocks = [], 0, 0
        s.state_blocks = s.pending_state = 0
        s.parent = s.reused_units = None

    def _preempt(self, s: Seq) -> None:
        if s.phase == DECODE:
            self._leave_decode(s)
        else:
            self.prefilling.remove(s)
            self.queued_tokens -= s.num_tokens - s.computed - s.ahead
        # Remember what it computed itself, to count what it will compute a second time.
        done = _gaps(s.reused, s.computed)
        s.done_before = _union(s.done_before, done) if s.done_before else done
        self._release(s, self.now_ns)
        s.external = 0  # recomputed here from now on
        s.computed = s.ahead = s.next_range = 0
        s.reused = ()
        s.phase = WAITING
        s.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(s)
        self.queued_tokens += s.num_tokens

    # ---- one iteration -------------------------------------------------------------------------
    def schedule(self) -> Batch | None:
        """Form the next iteration's batch and allocate its blocks; None when there is no work."""
        cache = self.cache
        now = self.now_ns
        preempted = False
        # NOTE (hot path): decode_blocks_needed inlined; allocating 0 blocks changes nothing.
        need = self.hist[-self.it % self.bt] if self.decoding else 0
        if need:
            while need > cache.available():
                self._preempt(self._newest_running())
                preempted = True
                need = self.hist[-self.it % self.bt] if self.decoding else 0
            cache.allocate(need, now)
        self.alloc_it = self.it + 1
        budget = self.max_tokens - len(self.decoding)
        n_dec = len(self.decoding)
        prefills: list[tuple[Seq, int]] = []
        extra: list = []  # state loads and stores of recurrent models
        if self.chunking is not None and (self.prefilling or self.waiting):
            head = self.prefilling[0] if self.prefilling else self.waiting[0]
            budget = n_dec + self.chunking.budget(
                n_dec, self.dec_sum + n_dec, self.dec_segs, self.queued_tokens, head.computed
            )
            budget = min(budget, self.max_tokens) - n_dec

        for s in list(self.prefilling):
            if budget <= 0:
                break
            if s.phase != PREFILL:
                continue  # preempted while making room for an older sequence
            n = _min3(s.num_tokens - s.computed - s.ahead, budget, self.chunk)
            stores = 0
            if s.ckpts:
                n, stores = self._cut(s, s.computed, n)
                if stores > 1:  # only without cuts: keep what an empty pool could hold
                    held = sum(x.blocks for x in s.nodes) + s.priv_blocks + s.state_blocks
                    stores = self._fit_stores(s, n, stores, held)
            need = cache.blocks_for(s.computed + s.ahead - s.node_tokens + n) - s.priv_blocks
            need += stores * self.sb
            # NOTE: the newest running sequence is never one scheduled earlier in this loop:
            # prefills are visited oldest first, so victims are `s` itself or newer.
            while need > cache.available() and s.phase == PREFILL:
                self._preempt(self._newest_running())
                preempted = True
            if s.phase != PREFILL:
                break
            cache.allocate(need, now)
            if stores:
                s.priv_blocks += need - stores * self.sb
                s.pending_state += stores * self.sb
                extra += [self.state_copy] * stores
            else:
                s.priv_blocks += need
            prefills.append((s, n))
            budget -= n
        if preempted:
            # Decodes preempted while scheduling prefills no longer run this iteration; nothing
            # is admitted after a preemption, so the budget is not needed any more.
            n_dec = len(self.decoding)

        while self.ready and budget > 0 and not preempted and self.num_running < self.max_seqs:
            s = self.ready.popleft()
            self._admit_external(s, extra)
            prefills.append((s, 1))
            budget -= 1
        # NOTE (hot path): num_running inlined.
        while (
            self.waiting and budget > 0 and not preempted
            and len(self.prefilling) + len(self.decoding) + len(self.loading) < self.max_seqs
        ):  # fmt: skip
            s = self.waiting[0]
            n = self._admit(s, budget, extra)
            if n == 0:
                break
            self.waiting.popleft()
            if s.phase == LOADING:
                continue  # it computes once its CPU-tier units are on the GPU
            prefills.append((s, n))
            budget -= n

        if not n_dec and not prefills:
            self.alloc_it = self.it
            if preempted and (self.waiting or self.ready):
                # Everything running was preempted (the rest of the pool is held by sequences
                # whose KV is arriving or loading): nothing would run, so admission reopens now
                # rather than the replica going idle with work queued.
                return self.schedule()
            return None
        tokens = n_dec
        logits = n_dec
        kv = self.dec_sum + n_dec
        qk = kv
        segs = self.dec_segs
        for s, n in prefills:
            tokens += n
            if s.ahead:  # msa: the chunk's queries skip the reused ranges ahead
                end, pairs, _, _ = _walk(s, n)
                segs += _segments(s.reused, s.num_tokens, end)
            else:
                c = s.computed
                end, pairs = c + n, n * c + n * (n + 1) // 2
                segs += s.segments
            kv += end
            qk += pairs
            if end == s.num_tokens:
                logits += 1
                if self.handoff is not None:  # the codec's producer side runs with the last chunk
                    extra += self.handoff.producer_ops(s)
        return Batch(n_dec, prefills, tokens, logits, kv, qk, segs, preempted,
                     tuple(extra) if extra else ())  # fmt: skip

    def _admit(self, s: Seq, budget: int, extra: list) -> int:
        """Admit the head of the queue with a first chunk; return its tokens, or 0 if it waits.
        A recurrent model's sequence also takes its live state, loads the checkpoint it resumes
        from, and plans the checkpoints its prefill will store (``extra`` gets their copies)."""
        cache = self.cache
        now = self.now_ns
        hit = cache.lookup(s.req, now, s.num_tokens)
        remaining = s.num_tokens - hit.tokens
        n = first = _min3(remaining, budget, self.chunk)
        if not self.chunked and n < remaining:
            return 0
        stores = 0
        if self.checkpoint is not None:
            s.ckpts = self._plan_checkpoints(s, hit.tokens)
            # Admission holds the hit, the checkpoint it loads, the live state, the first chunk
            # and the checkpoints that chunk stores (without cuts, every one it passes).
            held = sum(node.blocks for node in hit.nodes) + (2 if hit.resume else 1) * self.sb
            while s.ckpts:
                n, stores = self._cut(s, hit.tokens, first)
                fit = self._fit_stores(s, n, stores, held)
                if fit == stores or not self.cut_at_checkpoints:
                    stores = fit
                    break
                stores = 0  # the chunk no longer ends at the skipped one: cut again
                n = first
        need = cache.blocks_for(n) + self.sb * (1 + stores)
        if hit.cpu_nodes:  # blocks for the units it loads; its chunk's when it runs
            need = hit.cpu_blocks
        if not cache.try_allocate(need, now, hit, self.watermark):
            return 0
        s.state_blocks, s.pending_state = self.sb, self.sb * stores
        if stores or hit.resume is not None:
            extra += [self.state_copy] * (stores + (hit.resume is not None))
        if not s.admitted:
            s.admitted = True
            s.admitted_ns = now
            s.hit_tokens, s.hit_units = hit.tokens, hit.units
            s.cpu_hit_units = hit.cpu_units
            if self.seen is not None:
                self.checkpoint.observe(self.seen.depth(s.req))
        s.nodes = list(hit.nodes)
        s.node_tokens = hit.tokens - hit.cpu_blocks * self.bt  # CPU units: private till loaded
        s.reused = hit.ranges
        if self.msa and hit.nodes:
            s.computed, s.ahead, s.next_range = 0, hit.tokens, 0
            _skip_reused(s)
            s.segments = _segments(hit.ranges, s.num_tokens, s.num_tokens)
            s.reused_units = {node.depth: node for node in hit.nodes}
            s.next_unit, s.parent = 0, None
        else:  # a prefix (or nothing): the cursor starts after it, one segment
            s.computed, s.ahead, s.next_range = hit.tokens, 0, len(hit.ranges)
            s.segments = 1
            s.next_unit = len(hit.nodes)
            s.parent = hit.nodes[-1] if hit.nodes else None
        s.priv_blocks = cache.blocks_for(n)
        s.phase = PREFILL
        s.order = self._order
        self._order += 1
        self.queued_tokens -= hit.tokens
        if hit.cpu_nodes:
            s.priv_blocks = hit.cpu_blocks
            s.phase = LOADING
            s.cpu_nodes = hit.cpu_nodes
            self.loading[s.order] = s
            cache.cpu.load(hit.cpu_nodes, s.req.id, now, lambda t: self._loaded(s, t))
            return n
        self.prefilling.append(s)
        return n

    def _loaded(self, s: Seq, now_ns: int) -> None:
        """Its CPU-tier units are on the GPU: they become nodes it holds (and leave the tier),
        and it runs from the next batch on."""
        del self.loading[s.order]
        s.phase = PREFILL
        self._commit_units(s, now_ns)
        self.cache.cpu.loaded(s.cpu_nodes, now_ns)
        s.cpu_nodes = ()
        insort(self.prefilling, s, key=lambda x: x.order)
        self.on_ready()

    def _admit_external(self, s: Seq, extra: list) -> None:
        """Admit a handed-over sequence: its blocks (external KV and the token it computes) were
        reserved, so it needs none; its admission iteration runs the codec's consumer side."""
        s.phase = PREFILL
        s.order = self._order
        self._order += 1
        s.admitted = True
        s.next_unit = len(s.req.blocks)  # nothing of it joins this replica's prefix tree
        extra += s.consumer_ops
        s.consumer_ops = ()
        self.prefilling.append(s)

    def _plan_checkpoints(self, s: Seq, reused: int) -> list[int]:
        """The checkpoints its prefill stores: the policy's positions for its prompt, floored to
        the unit boundaries the cache keys states by, after what it reuses, at full units only,
        and not resident already — as unit counts k (the state after unit k − 1). Under an
        isolation cache the resident ones join its group (its entry holds them too)."""
        req = s.req
        unit, ids = req.unit_tokens, req.blocks
        if not ids:
            return []
        full = min(len(ids), req.prompt_tokens // unit)
        states = self.cache.tree.states
        group = s.states if self.cache.isolation is not None else None
        out = []
        for k in sorted({p // unit for p in self.checkpoint.positions(req.prompt_tokens)}):
            if not 0 < k <= full:
                continue
            st = states.get(ids[k - 1])
            if st is not None and st.depth == k - 1:
                if group is not None and st not in group:
                    group.append(st)
            elif reused < k * unit:
                out.append(k)
        return out

    def _cut(self, s: Seq, start: int, n: int) -> tuple[int, int]:
        """A chunk of ``n`` tokens from ``start``, and the checkpoints it ends at: cut at
        checkpoints (chunked prefill, ``capture: chunk``), the chunk ends at the first checkpoint
        position it reaches (so that the state there is the chunk's final state); else it
        stores every checkpoint it passes."""
        unit = s.req.unit_tokens
        end = start + n
        if self.cut_at_checkpoints:
            first = s.ckpts[0] * unit
            return (first - start, 1) if first <= end else (n, 0)
        return n, sum(1 for k in s.ckpts if k * unit <= end)

    def _fit_stores(self, s: Seq, n: int, stores: int, held: int) -> int:
        """The checkpoints a chunk of ``n`` tokens can store beside ``held`` blocks (what the
        sequence holds, with its live state) in an empty pool: the chunk's deepest ones; the
        shallower ones are given up (more could never be allocated)."""
        room = (self.cache.capacity - held - self.cache.blocks_for(n)) // self.sb
        if stores > room:
            del s.ckpts[: stores - room]
            return room
        return stores

    def complete(self, batch: Batch, k: int, now_ns: int) -> None:
        """Apply the effects of ``k`` iterations of ``batch`` ending at ``now_ns`` (k > 1 only for
        pure-decode batches)."""
        self.now_ns = now_ns
        n_dec = batch.decodes
        self.it += k
        self.dec_sum += n_dec * k
        heap = self.finish_heap
        while heap and heap[0][0] < self.it:
            _, order, s = heapq.heappop(heap)
            if s.phase == DECODE and s.order == order:
                self._leave_decode(s)
                self._finish(s, now_ns)
        handoff = self.handoff
        for s, n in batch.prefills:
            if s.ahead or s.done_before:
                self._advance(s, n)
            else:
                s.computed += n  # NOTE (hot path): _advance's plain case, inlined
            self.queued_tokens -= n
            if not s.external and s.next_unit < len(s.req.blocks):
                self._commit_units(s, now_ns)
            if s.pending_state:
                self._store_states(s, now_ns)
            if s.computed == s.num_tokens:
                self.prefilling.remove(s)
                if handoff is not None and not handoff.producer_samples:
                    self._hand_off(s, now_ns)  # the decode replica samples the first token
                    continue
                s.generated += 1
                s.num_tokens += 1
                if s.first_ns is None:
                    s.first_ns = now_ns
                    self.on_first_token(s, now_ns)
                if s.handoff_from >= 0:  # a handed-over sequence's first token here
                    s.rec.handoff_ns = now_ns - s.handoff_from
                    s.handoff_from = -1
                if s.generated >= s.req.output_tokens:
                    self._finish(s, now_ns)
                elif handoff is not None:
                    self._hand_off(s, now_ns)
                else:
                    self._join_decode(s)

    def _hand_off(self, s: Seq, now_ns: int) -> None:
        """The prompt is done: the sequence leaves for a decode replica, holding its blocks here
        until its transfer completes."""
        s.phase = HANDOFF
        self.outgoing[s.order] = s
        self.handoff.prefill_done(s, now_ns)

    def _advance(self, s: Seq, n: int) -> None:
        """Move the cursor past ``n`` computed tokens (and the reused ranges they reach)."""
        if s.ahead:
            end, _, spans, i = _walk(s, n)
            r = s.reused
            s.ahead -= sum(r[j][1] - r[j][0] for j in range(s.next_range, i))  # ranges crossed
            s.next_range = i
        else:
            end, spans = s.computed + n, [(s.computed, s.computed + n)]
        if s.done_before:  # tokens it computed before a preemption are computed again
            s.recomputed += sum(_overlap(s.done_before, a, b) for a, b in spans)
        s.computed = end
        if s.ahead:
            _skip_reused(s)

    def _commit_units(self, s: Seq, now_ns: int) -> None:
        """Cache the prompt units whose full blocks are now computed (DESIGN §5: a unit becomes a
        node when all its tokens have KV; here, its full blocks)."""
        req = s.req
        ids = req.blocks
        unit = req.unit_tokens
        prompt = req.prompt_tokens
        commit = self.cache.commit_unit
        bt = self.bt
        reused = s.reused_units
        while s.next_unit < len(ids):
            u = s.next_unit
            if reused is not None:
                node = reused.get(u)
                if node is not None:  # reused: step over it
                    s.parent = node
                    s.next_unit += 1
                    continue
            start = u * unit
            length = unit if prompt - start > unit else prompt - start
            if s.computed < start + length - length % bt:
                break
            node, freed = commit(ids[u], s.parent, u, start, length, now_ns)
            if node is None:
                break  # not cacheable (conflicting or blockless unit): later units stay private
            s.nodes.append(node)
            s.node_tokens += node.tokens
            s.priv_blocks -= freed
            s.parent = node
            s.next_unit += 1

    def _store_states(self, s: Seq, now_ns: int) -> None:
        """Keep the states its chunk ended at (their blocks were reserved with the chunk)."""
        req, cache = s.req, self.cache
        unit = req.unit_tokens
        while s.ckpts and s.ckpts[0] * unit <= s.computed:
            k = s.ckpts.pop(0)
            parent = s.nodes[k - 1] if len(s.nodes) >= k else None
            node = cache.store_state(req.blocks[k - 1], parent, k - 1, k * unit, now_ns)
            s.pending_state -= self.sb
            if node is None:  # resident already: our copy is not needed
                cache.release((), self.sb, now_ns)
                if cache.isolation is not None:
                    node = cache.tree.states[req.blocks[k - 1]]
                    if node not in s.states:
                        s.states.append(node)
            else:
                s.states.append(node)

    def _finish(self, s: Seq, now_ns: int) -> None:
        """Record it (``on_finish`` says whether its session goes on), cache the units its answer
        filled, and give everything back — pinned for eviction policies that keep an agent's KV
        through a tool call when its job goes on."""
        s.phase = DONE
        more = self.on_finish(s, now_ns)
        if s.states:
            self.cache.close_group(s.states, now_ns)
        if s.req.output_blocks and s.next_unit == len(s.req.blocks) and not s.external:
            self._commit_outputs(s, now_ns)
        self._release(s, now_ns, pin=bool(more) and s.req.job is not None)

    def _commit_outputs(self, s: Seq, now_ns: int) -> None:
        """Cache the units its answer filled (``output_blocks[i]`` is unit len(blocks) + i), as
        far as their KV was computed (every token but the last): a later turn whose prompt holds
        this answer hits them. A prompt that ends mid-unit leaves that unit's answer tokens
        uncached (in the next turn the unit is whole: another content than the cached part)."""
        req = s.req
        unit = req.unit_tokens
        base = len(req.blocks)
        commit = self.cache.commit_unit
        for i, oid in enumerate(req.output_blocks):
            u = base + i
            start = u * unit
            if start + unit > s.computed:
                break
            node, freed = commit(oid, s.parent, u, start, unit, now_ns)
            if node is None:
                break
            s.nodes.append(node)
            s.node_tokens += node.tokens
            s.priv_blocks -= freed
            s.parent = node

    def check_invariants(self) -> None:
        """Raise AssertionError unless blocks are conserved, reference counts are exact, and
        (contiguous) the resident set is prefix-closed."""
        cache = self.cache
        holders = list(self.prefilling) + list(self.decoding.values())
        holders += list(self.outgoing.values()) + list(self.loading.values())
        private = 0
        for s in [*self.prefilling, *self.outgoing.values(), *self.incoming.values(), *self.ready,
                  *self.loading.values()]:  # fmt: skip
            private += s.priv_blocks
        for s in self.waiting:
            assert s.priv_blocks == 0 and not s.nodes, f"waiting {s.req.id} holds blocks"
        for s in self.decoding.values():
            held = s.base_c + (self.alloc_it - s.base_it)
            private += cache.blocks_for(held - s.node_tokens)
        private += sum(s.state_blocks + s.pending_state for s in holders)
        nodes = list(cache.tree.nodes.values()) + list(cache.tree.states.values())
        node_blocks = sum(n.blocks for n in nodes)
        assert cache.free >= 0, f"negative free blocks {cache.free}"
        assert cache.free + node_blocks + private == cache.capacity, (
            f"blocks not conserved: free {cache.free} + nodes {node_blocks} + private {private} "
            f"!= capacity {cache.capacity}"
        )
        refs: dict[int, int] = {}
        for s in holders:
            for n in s.nodes:
                refs[id(n)] = refs.get(id(n), 0) + 1
        for n in nodes:
            assert n.refs == refs.get(id(n), 0) >= 0, f"{n} has refs {n.refs}, expected {refs}"
            assert n.free == (n.refs == 0), n
        evictable = sum(n.blocks for n in nodes if n.refs == 0)
        assert cache.tree.evictable_blocks == evictable, "evictable block count drifted"
        if cache.tree.leaf_only:
            for n in nodes:
                p = n.parent
                assert p is None or cache.tree.nodes.get(p.id) is p, f"{n}'s parent was evicted"
        cpu = cache.cpu
        if cpu is not None:
            held = cpu.blocks_held()
            assert cpu.free >= 0 and cpu.free + held == cpu.capacity, (
                f"CPU tier blocks not conserved: free {cpu.free} + held {held} != {cpu.capacity}"
            )
            loads: dict[int, int] = {}
            for s in self.loading.values():
                for n in s.cpu_nodes:
                    loads[id(n)] = loads.get(id(n), 0) + 1
            for n in cpu.tree.nodes.values():
                assert n.refs == loads.get(id(n), 0), f"CPU {n} has refs {n.refs}"
            assert cpu.tree.evictable_blocks == sum(
                n.blocks for n in cpu.tree.nodes.values() if n.refs == 0
            ), "CPU evictable block count drifted"
        queued = sum(s.num_tokens - s.computed - s.ahead for s in self.waiting)
        queued += sum(s.num_tokens - s.computed - s.ahead for s in self.prefilling)
        queued += sum(s.num_tokens - s.computed for s in [*self.ready, *self.loading.values()])
        assert queued == self.queued_tokens, f"queued tokens {self.queued_tokens} != {queued}"


def _skip_reused(s: Seq) -> None:
    """Move the cursor over reused ranges that start at it."""
    r = s.reused
    i = s.next_range
    while i < len(r) and r[i][0] == s.computed:
        s.computed = r[i][1]
        s.ahead -= r[i][1] - r[i][0]
        i += 1
    s.next_range = i


def _walk(s: Seq, n: int) -> tuple[int, int, list[tuple[int, int]], int]:
    """The next ``n`` positions to compute from the cursor, skipping reused ranges: returns the
    end (one past the last), their (query, key) pairs, the computed spans and the index of the
    first reused range not crossed."""
    r = s.reused
    i = s.next_range
    pos, left, pairs = s.computed, n, 0
    spans = []
    while True:
        stop = r[i][0] if i < len(r) else pos + left
        take = min(left, stop - pos)
        if take > 0:
            pairs += _tri(pos, pos + take)
            spans.append((pos, pos + take))
            pos += take
            left -= take
        if not left:
            return pos, pairs, spans, i
        pos = r[i][1]
        i += 1


def _gaps(reused, end: int) -> list[tuple[int, int]]:
    """The positions in [0, end) that no reused range covers."""
    out, prev = [], 0
    for a, b in reused:
        if a >= end:
            break
        if a > prev:
            out.append((prev, a))
        prev = b
    if prev < end:
        out.append((prev, end))
    return out


def _union(a: list, b: list) -> list:
    """Union of two sorted lists of disjoint ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(a + b):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _overlap(ranges, a: int, b: int) -> int:
    """Tokens of [a, b) inside the sorted disjoint ``ranges``."""
    return sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in ranges)
