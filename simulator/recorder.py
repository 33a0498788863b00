"""The per-request record kept while a run goes (compiled with the engine core): the record that
follows a request across replicas (:class:`RequestRecord`) and the :class:`Recorder` that packs
each finished or dropped request into the run's record file and keeps the running sums
(``metrics`` turns them into the summary; see its docstring for the definitions).

NOTE: its own module, beside ``metrics`` (numpy, the summary, the CSV), so that the code run once
per request is compiled: the scheduler calls ``Recorder.finished`` through the cluster's finisher
for every request.
"""

from __future__ import annotations

import struct
import tempfile
from typing import Any, Final

from .scheduler import Seq

NS: Final = 1e9
# One finished or dropped request, as packed int64s. Times in ns; status -1 = done, else the index
# of the drop reason; session -1: none; job latency, queueing delay, hand-off fields and replicas
# -1 where they do not apply.
FIELDS: Final = (
    "id", "arrival_ns", "first_ns", "finish_ns", "prompt_tokens", "output_tokens", "hit_tokens",
    "hit_units", "units", "recomputed", "preemptions", "replica", "status", "session", "turn",
    "job_ns", "queue_ns", "prefill_replica", "decode_replica", "payload_bytes", "wait_ns",
    "transfer_ns", "producer_codec_ns", "consumer_codec_ns", "handoff_ns", "cpu_hit_units",
)  # fmt: skip
F: Final = {name: i for i, name in enumerate(FIELDS)}
"""Column of each field in a record array."""
BASE_FIELDS: Final = 17
"""A unified cluster without a CPU tier writes only the first 17 fields (the hand-off's and the
CPU tier's do not apply)."""
_RECORD: Final = struct.Struct(f"<{len(FIELDS)}q")
_BASE_RECORD: Final = struct.Struct(f"<{BASE_FIELDS}q")
_NO_HANDOFF: Final = (-1, -1, -1, -1, -1, -1, -1, -1)


class RequestRecord:
    """What a request did across replicas, created at arrival (DESIGN §9, S4)."""

    __slots__ = (
        "arrival_ns",
        "prefill_replica",
        "handed_off",
        "hit_tokens",
        "hit_units",
        "cpu_hit_units",
        "preemptions",
        "recomputed",
        "prefill_done_ns",
        "admitted_ns",
        "payload_bytes",
        "wait_ns",
        "transfer_ns",
        "producer_codec_ns",
        "consumer_codec_ns",
        "handoff_ns",
    )

    def __init__(self, arrival_ns: int):
        self.arrival_ns = arrival_ns
        """When it reached the cluster."""
        self.prefill_replica = -1
        """The prefill replica that handed it off (-1: none)."""
        self.handed_off = False
        """Its prefill replica's counts below are final (a decode replica finishes it)."""
        self.hit_tokens = 0
        """Prompt tokens reused at its (prefill) replica's first admission."""
        self.hit_units = 0
        """Units found resident there, on the GPU or in the CPU tier."""
        self.cpu_hit_units = 0
        """Of those, units found in the CPU tier (loaded over PCIe)."""
        self.preemptions = 0
        """Preemptions on the replicas it left."""
        self.recomputed = 0
        """Tokens recomputed on the replicas it left."""
        self.prefill_done_ns = -1
        """When its prefill replica finished the prompt."""
        self.admitted_ns = -1
        """When its prefill replica first admitted it (the end of its queueing delay)."""
        self.payload_bytes = -1
        """Bytes its hand-off put on the link."""
        self.wait_ns = -1
        """Prefill done to the transfer's start (the decode replica reserving its blocks)."""
        self.transfer_ns = -1
        """Transfer start to arrival (overhead, shared bandwidth, latency)."""
        self.producer_codec_ns = -1
        """Codec work on the prefill replica (priced alone)."""
        self.consumer_codec_ns = -1
        """Codec work on the decode replica (priced alone; what pipelining leaves)."""
        self.handoff_ns = -1
        """Prefill done to the decode replica's first sampled token."""

    def left(self, seq: Any) -> None:
        """``seq`` (its state on the prefill replica) is handed off: keep its counts."""
        self.handed_off = True
        self.hit_tokens, self.hit_units = seq.hit_tokens, seq.hit_units
        self.cpu_hit_units = seq.cpu_hit_units
        self.admitted_ns = seq.admitted_ns
        self.preemptions += seq.preemptions
        self.recomputed += seq.recomputed


class Recorder:
    """Collects request outcomes during a run."""

    def __init__(
        self,
        slo_ttft_s: float,
        slo_tpot_s: float,
        warmup_requests: int = 0,
        handoff: bool = False,
        cpu_tier: bool = False,
    ):
        self.warmup = warmup_requests
        """Requests with a smaller id warm the cluster up and are not recorded."""
        self.handoff = handoff
        """Rows carry the hand-off columns (a prefill and a decode pool)."""
        self.cpu_tier = cpu_tier
        """Rows carry the CPU-tier column."""
        self.handoffs = self.handoff_ns_sum = 0
        self.payload_bytes = 0
        self.wait_ns_sum = self.transfer_ns_sum = 0
        self.producer_codec_ns_sum = self.consumer_codec_ns_sum = 0
        self.cpu_hit_units = 0
        self.sink: Any = tempfile.TemporaryFile()
        self.full = handoff or cpu_tier
        """Records carry every field (else the first ``BASE_FIELDS``)."""
        self.record: struct.Struct = _RECORD if self.full else _BASE_RECORD
        self._pack: Any = self.record.pack
        self.slo_ttft_s, self.slo_tpot_s = slo_ttft_s, slo_tpot_s
        self.count = 0
        self.finished_count = 0
        self.meets_slo = 0
        self.ttft_ns_sum = self.e2e_ns_sum = self.queue_ns_sum = 0  # exact integer sums
        self.tpot_sum: float = 0.0
        self.tpot_count = 0  # finished requests with more than one output token
        self.first_arrival_ns: int | None = None
        self.last_finish_ns: int | None = None
        self.last_event_ns = 0
        """The last finish or drop recorded (the end of the report's time axis)."""
        self.prompt_done = self.output_done = self.hit_tokens_done = 0
        self.units = self.hit_units = self.preemptions = self.recomputed = 0
        self.hit_requests = 0  # finished requests that found any unit resident
        self.drop_reasons: dict[str, int] = {}
        self.reason_list: list[str] = []
        self.jobs = 0  # sessions (conversations, agent jobs) that ended
        self.job_ns_sum = 0
        self.per_replica: dict[int, int] = {}
        """Requests finished on each replica (by index)."""
        self.estimated = 0
        """Requests whose token counts were estimated from text."""

    def __len__(self) -> int:
        return self.count

    def _arrived(self, arrival_ns: int, req: Any) -> None:
        self.count += 1
        self.estimated += req.lengths_estimated
        self.last_event_ns = max(self.last_event_ns, arrival_ns)
        if self.first_arrival_ns is None or arrival_ns < self.first_arrival_ns:
            self.first_arrival_ns = arrival_ns

    def finished(self, seq: Seq, replica: int, now_ns: int, job_ns: int = -1) -> None:
        r: Any = seq.req
        if r.id < self.warmup:
            return
        rec: RequestRecord | None = seq.rec  # None: one unified pool, the sequence is the whole
        # record
        # Handed off: the prefill replica's counts are in the record.
        hand = rec if rec is not None and rec.handed_off else None
        arr = seq.arrival_ns if rec is None else rec.arrival_ns
        first = seq.first_ns
        assert first is not None  # a finished request has its first token
        self._arrived(arr, r)
        ttft_ns = first - arr
        self.ttft_ns_sum += ttft_ns
        self.e2e_ns_sum += now_ns - arr
        queue_ns = (hand.admitted_ns if hand is not None else seq.admitted_ns) - arr
        self.queue_ns_sum += queue_ns
        self.per_replica[replica] = self.per_replica.get(replica, 0) + 1
        out = r.output_tokens
        self.finished_count += 1
        if out > 1:
            # NOTE: the same operations as _latency_keys, so the sum and percentiles agree.
            tpot = (now_ns - first) / NS / (out - 1)
            self.tpot_sum += tpot
            self.tpot_count += 1
            if ttft_ns / NS <= self.slo_ttft_s and tpot <= self.slo_tpot_s:
                self.meets_slo += 1
        elif ttft_ns / NS <= self.slo_ttft_s:
            self.meets_slo += 1
        if self.last_finish_ns is None or now_ns > self.last_finish_ns:
            self.last_finish_ns = now_ns
        self.last_event_ns = max(self.last_event_ns, now_ns)
        units = len(r.blocks)
        # Hits: the replica that prefilled it.
        if hand is not None:
            hit_tokens, hit_units, cpu_units = hand.hit_tokens, hand.hit_units, hand.cpu_hit_units
        else:
            hit_tokens, hit_units, cpu_units = seq.hit_tokens, seq.hit_units, seq.cpu_hit_units
        preemptions, recomputed = seq.preemptions, seq.recomputed
        if rec is not None:
            preemptions += rec.preemptions
            recomputed += rec.recomputed
        self.prompt_done += r.prompt_tokens
        self.output_done += out
        self.hit_tokens_done += hit_tokens
        self.hit_requests += hit_units > 0
        self.units += units
        self.hit_units += hit_units
        self.cpu_hit_units += cpu_units
        self.preemptions += preemptions
        self.recomputed += recomputed
        if hand is not None:
            self.handoffs += 1
            self.handoff_ns_sum += hand.handoff_ns
            self.payload_bytes += hand.payload_bytes
            self.wait_ns_sum += hand.wait_ns
            self.transfer_ns_sum += hand.transfer_ns
            self.producer_codec_ns_sum += hand.producer_codec_ns
            self.consumer_codec_ns_sum += hand.consumer_codec_ns
        fields: tuple[int, ...] = (
            r.id, arr, first, now_ns, r.prompt_tokens, out, hit_tokens, hit_units, units,
            recomputed, preemptions, replica, -1, -1 if r.session is None else r.session, r.turn,
            job_ns, queue_ns,
        )  # fmt: skip
        if self.full:
            if hand is not None:
                fields += (
                    hand.prefill_replica, replica, hand.payload_bytes, hand.wait_ns,
                    hand.transfer_ns, hand.producer_codec_ns, hand.consumer_codec_ns,
                    hand.handoff_ns, cpu_units,
                )  # fmt: skip
            else:
                fields += _NO_HANDOFF + (cpu_units,)
        self.sink.write(self._pack(*fields))
        if job_ns >= 0:
            self.jobs += 1
            self.job_ns_sum += job_ns

    def drop(self, req: Any, arrival_ns: int, reason: str, job_ns: int = -1) -> None:
        if req.id < self.warmup:
            return
        self._arrived(arrival_ns, req)
        self.units += len(req.blocks)
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1
        if reason not in self.reason_list:
            self.reason_list.append(reason)
        fields: tuple[int, ...] = (
            req.id, arrival_ns, -1, -1, req.prompt_tokens, req.output_tokens, 0, 0,
            len(req.blocks), 0, 0, -1, self.reason_list.index(reason),
            -1 if req.session is None else req.session, req.turn, job_ns, -1,
        )  # fmt: skip
        if self.full:
            fields += _NO_HANDOFF + (0,)
        self.sink.write(self._pack(*fields))
        if job_ns >= 0:
            self.jobs += 1
            self.job_ns_sum += job_ns
