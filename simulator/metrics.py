"""Per-request records and the run summary (DESIGN §4 definitions).

TTFT = first token − arrival; TPOT = (finish − first token) / (output tokens − 1), undefined for
one-token answers; E2E = finish − arrival. Records are kept column-wise in compact arrays
(about 100 bytes a request), not as Python objects.
"""

from __future__ import annotations

import csv
import io
import math
from array import array
from dataclasses import dataclass, field

import numpy as np

NS = 1e9

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


@dataclass
class Recorder:
    """Collects request outcomes during a run."""

    ids: array = field(default_factory=lambda: array("q"))
    arrival_ns: array = field(default_factory=lambda: array("q"))
    first_ns: array = field(default_factory=lambda: array("q"))
    finish_ns: array = field(default_factory=lambda: array("q"))
    ints: array = field(default_factory=lambda: array("q"))  # 8 per request, see INT_FIELDS
    dropped: dict[int, str] = field(default_factory=dict)  # row → reason

    INT_FIELDS = (
        "prompt",
        "output",
        "hit_tokens",
        "hit_units",
        "units",
        "recomputed",
        "preempt",
        "replica",
    )

    def finished(self, seq, replica: int, now_ns: int) -> None:
        r = seq.req
        self.ids.append(r.id)
        self.arrival_ns.append(seq.arrival_ns)
        self.first_ns.append(seq.first_ns)
        self.finish_ns.append(now_ns)
        self.ints.extend(
            (
                r.prompt_tokens,
                r.output_tokens,
                seq.hit_tokens,
                seq.hit_units,
                len(r.blocks),
                seq.recomputed,
                seq.preemptions,
                replica,
            )
        )

    def drop(self, req, arrival_ns: int, reason: str) -> None:
        self.dropped[len(self.ids)] = reason
        self.ids.append(req.id)
        self.arrival_ns.append(arrival_ns)
        self.first_ns.append(-1)
        self.finish_ns.append(-1)
        self.ints.extend((req.prompt_tokens, req.output_tokens, 0, 0, len(req.blocks), 0, 0, -1))

    def __len__(self) -> int:
        return len(self.ids)


def _pct(a: np.ndarray) -> dict[str, float]:
    if a.size == 0:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


class Results:
    """What a run produced: ``summary`` (a dict), ``requests`` (rows), CSV text."""

    def __init__(self, rec: Recorder, info: dict, slo_ttft_s: float, slo_tpot_s: float):
        n = len(rec)
        self._rec = rec
        order = np.argsort(np.frombuffer(rec.ids, dtype=np.int64), kind="stable")
        self._order = order
        ints = (
            np.frombuffer(rec.ints, dtype=np.int64).reshape(n, 8)
            if n
            else np.zeros((0, 8), np.int64)
        )
        self._ints = ints
        arr = np.frombuffer(rec.arrival_ns, dtype=np.int64) if n else np.zeros(0, np.int64)
        first = np.frombuffer(rec.first_ns, dtype=np.int64) if n else np.zeros(0, np.int64)
        fin = np.frombuffer(rec.finish_ns, dtype=np.int64) if n else np.zeros(0, np.int64)
        done = fin >= 0
        self._done = done
        ttft = (first - arr) / NS
        e2e = (fin - arr) / NS
        out = ints[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out > 1, (fin - first) / NS / np.maximum(out - 1, 1), np.nan)
        self._ttft, self._tpot, self._e2e = ttft, tpot, e2e
        self._arr, self._first, self._fin = arr, first, fin

        t0 = int(arr.min()) if n else 0
        t1 = int(fin[done].max()) if done.any() else t0
        span = (t1 - t0) / NS
        d_ttft, d_tpot = ttft[done], tpot[done]
        tpot_ok = np.isnan(d_tpot) | (d_tpot <= slo_tpot_s)
        meets = (d_ttft <= slo_ttft_s) & tpot_ok
        prompt_done = int(ints[done, 0].sum())
        output_done = int(ints[done, 1].sum())
        units = int(ints[:, 4].sum())
        reasons: dict[str, int] = {}
        for reason in rec.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        self.summary = {
            "scenario": info.get("scenario", ""),
            "requests": n,
            "finished": int(done.sum()),
            "dropped": n - int(done.sum()),
            "drop_reasons": dict(sorted(reasons.items())),
            "duration_s": span,
            "ttft_s": _pct(d_ttft),
            "tpot_s": _pct(d_tpot[~np.isnan(d_tpot)]),
            "e2e_s": _pct(e2e[done]),
            "throughput": {
                "requests_per_s": int(done.sum()) / span if span > 0 else math.nan,
                "output_tokens_per_s": output_done / span if span > 0 else math.nan,
                "total_tokens_per_s": (prompt_done + output_done) / span if span > 0 else math.nan,
            },
            "prefix_hit_ratio": int(ints[:, 3].sum()) / units if units else 0.0,
            "token_hit_ratio": int(ints[done, 2].sum()) / prompt_done if prompt_done else 0.0,
            "slo": {
                "ttft_s": slo_ttft_s,
                "tpot_s": slo_tpot_s,
                "attainment": float(meets.sum()) / n if n else math.nan,
            },
            "preemptions": int(ints[:, 6].sum()),
            "recomputed_tokens": int(ints[:, 5].sum()),
            **info.get("extra", {}),
        }

    @property
    def requests(self) -> list[dict]:
        """One dict per request, ordered by request id."""
        text = self.requests_csv()
        return list(csv.DictReader(io.StringIO(text)))

    def requests_csv(self) -> str:
        """The per-request table as CSV text (deterministic formatting)."""
        buf = io.StringIO()
        buf.write(",".join(COLUMNS) + "\n")
        ids = self._rec.ids
        dropped = self._rec.dropped

        def f(x: float) -> str:
            return "" if x != x else f"{x:.9f}"

        for row in self._order.tolist():
            p, o, ht, hu, u, rc, pre, rep = self._ints[row].tolist()
            if row in dropped:
                buf.write(
                    f"{ids[row]},{f(self._arr[row] / NS)},,,,,,{p},{o},0,0,{u},0,0,,"
                    f"dropped: {dropped[row]}\n"
                )
                continue
            buf.write(
                f"{ids[row]},{f(self._arr[row] / NS)},{f(self._first[row] / NS)},"
                f"{f(self._fin[row] / NS)},{f(self._ttft[row])},{f(self._tpot[row])},"
                f"{f(self._e2e[row])},{p},{o},{ht},{hu},{u},{rc},{pre},{rep},done\n"
            )
        return buf.getvalue()

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
                f"per replica, {s['evictions']} evictions)"
            )
        return "\n".join(lines)
