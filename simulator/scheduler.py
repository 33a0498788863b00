"""vLLM-like continuous batching with chunked prefill and preemption by recompute (plain Python).

Each iteration (vLLM V1 semantics): every running request in decode gets one token; running
requests still in prefill get their next chunk within the token budget; then waiting requests are
admitted first-come-first-served while the budget, ``max_num_seqs`` and the KV pool allow. A request
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
from collections import deque
from dataclasses import dataclass

from .cache import KVCache

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class Seq:
    """A request's state on one replica."""

    __slots__ = (
        "req",
        "arrival_ns",
        "num_tokens",
        "computed",
        "generated",
        "nodes",
        "node_tokens",
        "next_unit",
        "priv_blocks",
        "phase",
        "order",
        "first_ns",
        "hit_tokens",
        "hit_units",
        "admitted",
        "preemptions",
        "recomputed",
        "base_it",
        "base_c",
        "base_g",
        "hist_key",
        "finish_it",
    )

    def __init__(self, req, arrival_ns: int):
        self.req = req
        self.arrival_ns = arrival_ns
        self.num_tokens = req.prompt_tokens
        self.computed = 0
        self.generated = 0
        self.nodes: list = []
        self.node_tokens = 0
        self.next_unit = 0
        self.priv_blocks = 0
        self.phase = WAITING
        self.order = -1
        self.first_ns: int | None = None
        self.hit_tokens = 0
        self.hit_units = 0
        self.admitted = False
        self.preemptions = 0
        self.recomputed = 0


@dataclass(slots=True)
class Batch:
    """One iteration's work: every decoding sequence plus prefill chunks ``(seq, tokens)``."""

    decodes: int
    prefills: list
    tokens: int
    logits: int
    kv_tokens: int
    qk_pairs: int
    preempted: bool = False

    @property
    def seqs(self) -> int:
        return self.decodes + len(self.prefills)


class Scheduler:
    """Batch formation and KV accounting of one replica, driven by its engine loop."""

    def __init__(
        self,
        cache: KVCache,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        chunk_tokens: int,
        enable_chunked_prefill: bool,
        on_first_token=None,
        on_finish=None,
    ):
        self.cache = cache
        self.bt = cache.block_tokens
        self.max_tokens = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self.chunk = chunk_tokens
        self.chunked = enable_chunked_prefill
        self.on_first_token = on_first_token or (lambda seq, now: None)
        self.on_finish = on_finish or (lambda seq, now: None)
        self.waiting: deque[Seq] = deque()
        self.prefilling: list[Seq] = []
        self.decoding: dict[int, Seq] = {}
        self.it = 0
        self.alloc_it = 0  # decode iterations whose blocks are allocated (it, or it + 1)
        self.hist = [0] * self.bt
        self.dec_sum = 0  # Σ computed over decoding sequences at iteration `it`
        self.finish_heap: list[tuple[int, int, Seq]] = []
        self.queued_tokens = 0  # prompt tokens still to prefill (waiting + prefilling)
        self.preemptions = 0
        self.now_ns = 0
        self._order = 0

    # ---- state seen from outside -------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def add(self, seq: Seq) -> None:
        self.waiting.append(seq)
        self.queued_tokens += seq.num_tokens

    # ---- decode sequences, kept lazily ---------------------------------------------------------
    def _join_decode(self, s: Seq) -> None:
        s.phase = DECODE
        s.base_it, s.base_c, s.base_g = self.it, s.computed, s.generated
        s.hist_key = (s.computed - s.node_tokens - self.it) % self.bt
        s.finish_it = self.it + s.req.output_tokens - s.generated - 1
        self.hist[s.hist_key] += 1
        self.dec_sum += s.computed
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
        self.hist[s.hist_key] -= 1
        self.dec_sum -= s.computed
        del self.decoding[s.order]

    def decode_blocks_needed(self, it: int) -> int:
        """New blocks the decoding sequences need at iteration ``it``."""
        return self.hist[-it % self.bt]

    def decode_blocks_between(self, first: int, end: int) -> int:
        """New blocks the decoding sequences need over iterations [first, end).

        NOTE: every block_size iterations each decoding sequence needs exactly one block, so whole
        cycles cost len(decoding) each and only the remainder is summed: O(block_size)."""
        n = end - first
        if n <= 0:
            return 0
        cycles, rest = divmod(n, self.bt)
        total = cycles * len(self.decoding)
        hist, bt = self.hist, self.bt
        for it in range(first + cycles * bt, end):
            total += hist[-it % bt]
        return total

    def decode_iterations_affordable(self, first: int, limit: int, blocks: int) -> int:
        """The largest m <= limit such that iterations [first, first + m) need <= ``blocks``."""
        n_dec = len(self.decoding)
        if n_dec == 0:
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
        best = max(self.decoding) if self.decoding else -1
        if self.prefilling and self.prefilling[-1].order > best:
            return self.prefilling[-1]
        return self.decoding[best]

    def _release(self, s: Seq) -> None:
        for node in s.nodes:
            self.cache.tree.release(node)
        self.cache.release(s.priv_blocks)
        s.nodes, s.node_tokens, s.next_unit, s.priv_blocks = [], 0, 0, 0

    def _preempt(self, s: Seq) -> None:
        if s.phase == DECODE:
            self._leave_decode(s)
        else:
            self.prefilling.remove(s)
            self.queued_tokens -= s.num_tokens - s.computed
        self._release(s)
        s.computed = 0
        s.phase = WAITING
        s.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(s)
        self.queued_tokens += s.num_tokens

    # ---- one iteration -------------------------------------------------------------------------
    def schedule(self) -> Batch | None:
        """Form the next iteration's batch and allocate its blocks; None when there is no work."""
        cache = self.cache
        preempted = False
        need = self.decode_blocks_needed(self.it) if self.decoding else 0
        while need > cache.available():
            self._preempt(self._newest_running())
            preempted = True
            need = self.decode_blocks_needed(self.it) if self.decoding else 0
        cache.allocate(need)
        self.alloc_it = self.it + 1
        budget = self.max_tokens - len(self.decoding)
        n_dec = len(self.decoding)
        prefills: list[tuple[Seq, int]] = []

        for s in list(self.prefilling):
            if budget <= 0:
                break
            if s.phase != PREFILL:
                continue  # preempted while making room for an older sequence
            n = min(s.num_tokens - s.computed, budget, self.chunk)
            need = cache.blocks_for(s.computed + n - s.node_tokens) - s.priv_blocks
            # NOTE: the newest running sequence is never one scheduled earlier in this loop:
            # prefills are visited oldest first, so victims are `s` itself or newer.
            while need > cache.available() and s.phase == PREFILL:
                self._preempt(self._newest_running())
                preempted = True
            if s.phase != PREFILL:
                break
            cache.allocate(need)
            s.priv_blocks += need
            prefills.append((s, n))
            budget -= n
        if preempted:
            # Decodes preempted while scheduling prefills no longer run this iteration.
            n_dec = len(self.decoding)
            budget = self.max_tokens - n_dec - sum(n for _, n in prefills)

        while self.waiting and budget > 0 and not preempted and self.num_running < self.max_seqs:
            s = self.waiting[0]
            n = self._admit(s, budget)
            if n == 0:
                break
            self.waiting.popleft()
            prefills.append((s, n))
            budget -= n

        if not n_dec and not prefills:
            self.alloc_it = self.it
            return None
        tokens = n_dec
        logits = n_dec
        kv = self.dec_sum + n_dec
        qk = kv
        for s, n in prefills:
            c = s.computed
            tokens += n
            kv += c + n
            qk += n * c + n * (n + 1) // 2
            if c + n == s.num_tokens:
                logits += 1
        return Batch(n_dec, prefills, tokens, logits, kv, qk, preempted)

    def _admit(self, s: Seq, budget: int) -> int:
        """Admit the head of the queue with a first chunk; return its tokens, or 0 if it waits."""
        cache = self.cache
        req = s.req
        nodes = (
            cache.tree.match(req.blocks, req.prompt_tokens, req.unit_tokens) if req.blocks else []
        )
        raw_units = len(nodes)
        hit = sum(n.tokens for n in nodes)
        while nodes and hit >= s.num_tokens:  # at least one token must be computed for logits
            hit -= nodes.pop().tokens
        remaining = s.num_tokens - hit
        n = min(remaining, budget, self.chunk)
        if not self.chunked and n < remaining:
            return 0
        pinned = sum(node.blocks for node in nodes if node.refs == 0)
        need = cache.blocks_for(n)
        if need > cache.available() - pinned:
            return 0
        now = self.now_ns
        for node in nodes:
            cache.tree.acquire(node, now)
        cache.allocate(need)
        if not s.admitted:
            s.admitted = True
            s.hit_tokens, s.hit_units = hit, raw_units
        else:
            s.recomputed += remaining
        s.nodes, s.node_tokens, s.next_unit = nodes, hit, len(nodes)
        s.computed = hit
        s.priv_blocks = need
        s.phase = PREFILL
        s.order = self._order
        self._order += 1
        self.queued_tokens -= hit
        self.prefilling.append(s)
        return n

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
        for s, n in batch.prefills:
            s.computed += n
            self.queued_tokens -= n
            self._insert_units(s, now_ns)
            if s.computed == s.num_tokens:
                s.generated += 1
                s.num_tokens += 1
                if s.first_ns is None:
                    s.first_ns = now_ns
                    self.on_first_token(s, now_ns)
                self.prefilling.remove(s)
                if s.generated >= s.req.output_tokens:
                    self._finish(s, now_ns)
                else:
                    self._join_decode(s)

    def _insert_units(self, s: Seq, now_ns: int) -> None:
        """Cache the content units whose tokens are now all computed."""
        req = s.req
        ids = req.blocks
        unit = req.unit_tokens
        while s.next_unit < len(ids):
            u = s.next_unit
            end = min((u + 1) * unit, req.prompt_tokens)
            # A partial last unit is cached only when nothing follows it in private blocks, so
            # that private and node blocks stay block-aligned.
            if s.computed < end or (end - u * unit < unit and s.computed != end):
                break
            node, freed = self.cache.insert_or_share(ids[u], u, end - u * unit, now_ns)
            if node is None:
                break  # conflicting partial unit: later units stay private too
            s.nodes.append(node)
            s.node_tokens += node.tokens
            s.priv_blocks -= freed
            s.next_unit += 1

    def _finish(self, s: Seq, now_ns: int) -> None:
        self._release(s)
        s.phase = DONE
        self.on_finish(s, now_ns)

    def check_invariants(self) -> None:
        """Raise AssertionError unless blocks are conserved and reference counts are exact."""
        cache = self.cache
        holders = list(self.prefilling) + list(self.decoding.values())
        private = sum(s.priv_blocks for s in self.prefilling)
        for s in self.decoding.values():
            held = s.base_c + (self.alloc_it - s.base_it)
            private += cache.blocks_for(held - s.node_tokens)
        nodes = list(cache.tree.nodes.values())
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
        evictable = sum(n.blocks for n in nodes if n.refs == 0)
        assert cache.tree.evictable_blocks == evictable, "evictable block count drifted"
        queued = sum(s.num_tokens - s.computed for s in list(self.waiting) + self.prefilling)
        assert queued == self.queued_tokens, f"queued tokens {self.queued_tokens} != {queued}"
