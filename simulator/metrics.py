"""Per-request records and the run summary (DESIGN §4 definitions).

TTFT = first token − arrival; TPOT = (finish − first token) / (output tokens − 1), undefined for
one-token answers; E2E = finish − arrival.

NOTE (memory): a finished request's record is appended at once, as 13 packed integers, to a
temporary file (completion order, which is deterministic) and formatted as CSV only when written;
only its three latencies stay in memory, in float arrays (24 bytes a request), for exact
percentiles; everything else is a running sum. So memory barely grows with trace length.
"""

from __future__ import annotations

import csv
import io
import math
import struct
import tempfile
from array import array

import numpy as np

NS = 1e9
_RECORD = struct.Struct("<13q")  # id, arrival, first, finish (ns), 8 counts, status (-1 = done)

COLUMNS = (
    "id",
    "arrival_s",
    "first_token_s",
    "finish_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "prompt_tokens",
    "output_tokens",
    "hit_tokens",
    "hit_units",
    "units",
    "recomputed_tokens",
    "preemptions",
    "replica",
    "status",
)


class Recorder:
    """Collects request outcomes during a run."""

    def __init__(self, slo_ttft_s: float, slo_tpot_s: float):
        self.sink = tempfile.TemporaryFile()
        self._pack = _RECORD.pack
        self.ttft = array("d")
        self.tpot = array("d")  # NaN for one-token answers
        self.e2e = array("d")
        self.slo_ttft_s, self.slo_tpot_s = slo_ttft_s, slo_tpot_s
        self.count = 0
        self.finished_count = 0
        self.meets_slo = 0
        self.first_arrival_ns: int | None = None
        self.last_finish_ns: int | None = None
        self.prompt_done = self.output_done = self.hit_tokens_done = 0
        self.units = self.hit_units = self.preemptions = self.recomputed = 0
        self.drop_reasons: dict[str, int] = {}
        self.reason_list: list[str] = []

    def __len__(self) -> int:
        return self.count

    def _arrived(self, arrival_ns: int) -> None:
        self.count += 1
        if self.first_arrival_ns is None or arrival_ns < self.first_arrival_ns:
            self.first_arrival_ns = arrival_ns

    def finished(self, seq, replica: int, now_ns: int) -> None:
        r = seq.req
        arr, first = seq.arrival_ns, seq.first_ns
        self._arrived(arr)
        ttft = (first - arr) / NS
        e2e = (now_ns - arr) / NS
        out = r.output_tokens
        tpot = (now_ns - first) / NS / (out - 1) if out > 1 else math.nan
        self.ttft.append(ttft)
        self.tpot.append(tpot)
        self.e2e.append(e2e)
        self.finished_count += 1
        if ttft <= self.slo_ttft_s and (out <= 1 or tpot <= self.slo_tpot_s):
            self.meets_slo += 1
        if self.last_finish_ns is None or now_ns > self.last_finish_ns:
            self.last_finish_ns = now_ns
        units = len(r.blocks)
        self.prompt_done += r.prompt_tokens
        self.output_done += out
        self.hit_tokens_done += seq.hit_tokens
        self.units += units
        self.hit_units += seq.hit_units
        self.preemptions += seq.preemptions
        self.recomputed += seq.recomputed
        self.sink.write(
            self._pack(
                r.id,
                arr,
                first,
                now_ns,
                r.prompt_tokens,
                out,
                seq.hit_tokens,
                seq.hit_units,
                units,
                seq.recomputed,
                seq.preemptions,
                replica,
                -1,
            )
        )

    def drop(self, req, arrival_ns: int, reason: str) -> None:
        self._arrived(arrival_ns)
        self.units += len(req.blocks)
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1
        if reason not in self.reason_list:
            self.reason_list.append(reason)
        self.sink.write(
            self._pack(
                req.id,
                arrival_ns,
                -1,
                -1,
                req.prompt_tokens,
                req.output_tokens,
                0,
                0,
                len(req.blocks),
                0,
                0,
                -1,
                self.reason_list.index(reason),
            )
        )


def _pct(a: np.ndarray) -> dict[str, float]:
    if a.size == 0:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


class Results:
    """What a run produced: ``summary`` (a dict), ``requests`` (rows), CSV text."""

    def __init__(self, rec: Recorder, info: dict):
        self._sink = rec.sink
        self._reasons = rec.reason_list
        n, done = rec.count, rec.finished_count
        t0 = rec.first_arrival_ns or 0
        t1 = rec.last_finish_ns if rec.last_finish_ns is not None else t0
        span = (t1 - t0) / NS
        tpot = np.frombuffer(rec.tpot, dtype=np.float64) if done else np.zeros(0)

        def arr(a):
            return np.frombuffer(a, dtype=np.float64) if done else np.zeros(0)

        self.summary = {
            "scenario": info.get("scenario", ""),
            "requests": n,
            "finished": done,
            "dropped": n - done,
            "drop_reasons": dict(sorted(rec.drop_reasons.items())),
            "duration_s": span,
            "ttft_s": _pct(arr(rec.ttft)),
            "tpot_s": _pct(tpot[~np.isnan(tpot)]),
            "e2e_s": _pct(arr(rec.e2e)),
            "throughput": {
                "requests_per_s": done / span if span > 0 else math.nan,
                "output_tokens_per_s": rec.output_done / span if span > 0 else math.nan,
                "total_tokens_per_s": (rec.prompt_done + rec.output_done) / span
                if span > 0
                else math.nan,
            },
            "prefix_hit_ratio": rec.hit_units / rec.units if rec.units else 0.0,
            "token_hit_ratio": rec.hit_tokens_done / rec.prompt_done if rec.prompt_done else 0.0,
            "slo": {
                "ttft_s": rec.slo_ttft_s,
                "tpot_s": rec.slo_tpot_s,
                "attainment": rec.meets_slo / n if n else math.nan,
            },
            "preemptions": rec.preemptions,
            "recomputed_tokens": rec.recomputed,
            **info.get("extra", {}),
        }

    def write_requests_csv(self, out) -> None:
        """Write the per-request table (rows in completion order) to a text file object."""
        out.write(",".join(COLUMNS) + "\n")
        sink, size = self._sink, _RECORD.size
        sink.flush()
        sink.seek(0)
        while chunk := sink.read(size * 4096):
            lines = []
            for rec in _RECORD.iter_unpack(chunk):
                rid, arr, first, fin, p, o, ht, hu, u, rc, pre, rep, status = rec
                if status >= 0:
                    lines.append(
                        f"{rid},{arr / NS:.9f},,,,,,{p},{o},0,0,{u},0,0,,"
                        f"dropped: {self._reasons[status]}\n"
                    )
                    continue
                tpot = f"{(fin - first) / NS / (o - 1):.9f}" if o > 1 else ""
                ttft, e2e = (first - arr) / NS, (fin - arr) / NS
                lines.append(
                    f"{rid},{arr / NS:.9f},{first / NS:.9f},{fin / NS:.9f},{ttft:.9f},{tpot},"
                    f"{e2e:.9f},{p},{o},{ht},{hu},{u},{rc},{pre},{rep},done\n"
                )
            out.write("".join(lines))
        sink.seek(0, io.SEEK_END)

    def columns(self) -> dict[str, np.ndarray]:
        """Per-request columns (completion order) as arrays, seconds as floats, NaN if dropped."""
        self._sink.flush()
        self._sink.seek(0)
        raw = np.frombuffer(self._sink.read(), dtype="<i8").reshape(-1, _RECORD.size // 8)
        self._sink.seek(0, io.SEEK_END)
        done = raw[:, 12] < 0
        arr, first, fin, out = raw[:, 1] / NS, raw[:, 2] / NS, raw[:, 3] / NS, raw[:, 5]
        nan = np.full(len(raw), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(done & (out > 1), (fin - first) / np.maximum(out - 1, 1), np.nan)
        return {
            "arrival_s": arr,
            "finish_s": np.where(done, fin, nan),
            "ttft_s": np.where(done, first - arr, nan),
            "tpot_s": tpot,
            "e2e_s": np.where(done, fin - arr, nan),
            "output_tokens": out.astype(np.float64),
            "units": raw[:, 8].astype(np.float64),
            "hit_units": raw[:, 7].astype(np.float64),
            "preemptions": raw[:, 10].astype(np.float64),
        }

    def table_rows(self) -> list[tuple[str, str]]:
        """The summary as (label, value) pairs, for reports."""
        s = self.summary

        def pct(d):
            return " / ".join(f"{d[k] * 1e3:.1f}" for k in ("p50", "p90", "p99")) + " ms"

        tp = s["throughput"]
        rows = [
            ("requests", f"{s['finished']} finished of {s['requests']} ({s['dropped']} dropped)"),
            ("TTFT p50 / p90 / p99", pct(s["ttft_s"])),
            ("TPOT p50 / p90 / p99", pct(s["tpot_s"])),
            ("E2E p50 / p90 / p99", pct(s["e2e_s"])),
            (
                "throughput",
                f"{tp['requests_per_s']:.2f} req/s, {tp['output_tokens_per_s']:.0f} output tok/s",
            ),
            ("prefix-hit ratio", f"{s['prefix_hit_ratio']:.1%} of content units"),
            (
                "SLO attainment",
                f"{s['slo']['attainment']:.1%} (TTFT ≤ {s['slo']['ttft_s']} s, "
                f"TPOT ≤ {s['slo']['tpot_s'] * 1e3:.0f} ms)",
            ),
            ("preemptions", f"{s['preemptions']} ({s['recomputed_tokens']} tokens recomputed)"),
        ]
        if "gpus" in s:
            rows.append(
                (
                    "GPUs",
                    f"{s['gpus']} ({s['kv_blocks_per_replica']} KV blocks/replica, "
                    f"busy {s['busy_fraction']:.0%} of the time)",
                )
            )
        if "latency_model" in s:
            rows.append(("latency model", s["latency_model"]))
        return rows

    def requests_csv(self) -> str:
        """The per-request table as CSV text (rows in completion order)."""
        buf = io.StringIO()
        self.write_requests_csv(buf)
        return buf.getvalue()

    @property
    def requests(self) -> list[dict]:
        """One dict per request, ordered by request id."""
        rows = list(csv.DictReader(io.StringIO(self.requests_csv())))
        return sorted(rows, key=lambda r: int(r["id"]))

    def table(self) -> str:
        """The summary as a fixed-width table for the terminal."""
        s = self.summary

        def ms(d):
            return " ".join(f"{d[k] * 1e3:9.1f}" for k in ("p50", "p90", "p99"))

        tp = s["throughput"]
        lines = [
            f"{'':26}{'p50':>9} {'p90':>9} {'p99':>9}",
            f"{'TTFT (ms)':26}{ms(s['ttft_s'])}",
            f"{'TPOT (ms)':26}{ms(s['tpot_s'])}",
            f"{'E2E latency (ms)':26}{ms(s['e2e_s'])}",
            "",
            f"{'requests finished':26}{s['finished']:>9} of {s['requests']}"
            + (f"  ({s['dropped']} dropped)" if s["dropped"] else ""),
            f"{'simulated span':26}{s['duration_s']:>9.1f} s",
            f"{'throughput':26}{tp['requests_per_s']:>9.2f} req/s  "
            f"{tp['output_tokens_per_s']:.0f} output tok/s",
            f"{'prefix-hit ratio':26}{s['prefix_hit_ratio']:>9.1%} of content units  "
            f"({s['token_hit_ratio']:.1%} of prompt tokens reused)",
            f"{'SLO attainment':26}{s['slo']['attainment']:>9.1%}  "
            f"(TTFT <= {s['slo']['ttft_s']} s, TPOT <= {s['slo']['tpot_s'] * 1e3:.0f} ms)",
            f"{'preemptions':26}{s['preemptions']:>9}  "
            f"({s['recomputed_tokens']} tokens recomputed)",
        ]
        if "gpus" in s:
            lines.append(
                f"{'GPUs':26}{s['gpus']:>9}  ({s['kv_blocks_per_replica']} KV blocks "
                f"per replica, {s['evictions']} evictions, busy {s['busy_fraction']:.0%})"
            )
        return "\n".join(lines)
