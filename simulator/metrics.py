"""Per-request records and the run summary (DESIGN §4 definitions).

TTFT = first token − arrival; TPOT = (finish − first token) / (output tokens − 1), undefined for
one-token answers; E2E = finish − arrival; queueing delay = first admission − arrival (the time a
request waits before any of it runs); goodput = requests that met both SLOs per second.

A request's record (:class:`RequestRecord`) is created at arrival and follows it across replicas
(DESIGN §9, S4): with a prefill and a decode pool, the prefill replica's hits, the hand-off's
payload, waits and codec times, and the decode replica's outcome end up in one row.

NOTE (memory): a finished request's record is appended at once, as packed integers
(``FIELDS``), to a temporary file (completion order, which is deterministic) and formatted as CSV
only when written; everything else is a running sum. Percentiles are exact yet need no
per-request memory: they are selected from that file in a few streaming passes
(``_order_statistics``). So memory does not grow with trace length.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from .recorder import BASE_FIELDS, NS, F, Recorder

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
    "session",
    "turn",
    "job_latency_s",
    "queue_s",
)
HANDOFF_COLUMNS = (
    "prefill_replica",
    "decode_replica",
    "payload_bytes",
    "wait_s",
    "transfer_s",
    "producer_codec_s",
    "consumer_codec_s",
    "handoff_s",
)
"""With a prefill and a decode pool: the replicas, the payload, the wait for the decode replica's
blocks, the transfer (send to arrival), each side's codec time, and the hand-off (prefill done to
the decode replica's first token)."""
CPU_COLUMNS = ("cpu_hit_units",)
"""With a CPU tier: units found there (``hit_units`` counts both tiers)."""


INT_COLUMNS = frozenset(
    ("id", "prompt_tokens", "output_tokens", "hit_tokens", "hit_units", "units",
     "recomputed_tokens", "preemptions", "replica", "session", "turn", "prefill_replica",
     "decode_replica", "payload_bytes", "cpu_hit_units")
)  # fmt: skip
"""Columns of whole numbers (the others but ``status`` are seconds)."""
_FIELD_OF = {"recomputed_tokens": "recomputed"}
"""A column's record field where the names differ."""


_CHUNK_RECORDS = 4096
_BINS = 4096  # histogram bins per selection pass
_COLLECT = 1 << 16  # values gathered at most to finish a selection


def _records(sink, fields: int, rows: int = _CHUNK_RECORDS):
    """The records written so far, as int64 arrays of shape (n, fields), ``rows`` at most at a
    time."""
    sink.flush()
    sink.seek(0)
    try:
        while chunk := sink.read(8 * fields * rows):
            yield np.frombuffer(chunk, dtype="<i8").reshape(-1, fields)
    finally:
        sink.seek(0, io.SEEK_END)


def _latency_keys(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Finished requests' TTFT and E2E (ns) and TPOT (the int64 bit patterns of the float seconds:
    for non-negative floats they sort as the floats do), as int64 sort keys."""
    done = raw[raw[:, F["status"]] < 0]
    arr, first = done[:, F["arrival_ns"]], done[:, F["first_ns"]]
    fin, out = done[:, F["finish_ns"]], done[:, F["output_tokens"]]
    multi = out > 1
    # Same operations, in the same order, as Recorder.finished computes TPOT.
    tpot = (fin[multi] - first[multi]) / NS / (out[multi] - 1)
    jobs = raw[:, F["job_ns"]]
    keys = {
        "ttft_s": first - arr,
        "tpot_s": tpot.view(np.int64),
        "e2e_s": fin - arr,
        "job_latency_s": jobs[jobs >= 0],
        "queue_s": done[:, F["queue_ns"]],
    }
    if raw.shape[1] > F["handoff_ns"]:
        handoff = done[:, F["handoff_ns"]]
        keys["handoff_s"] = handoff[handoff >= 0]
    return keys


def _order_statistics(
    sink, wanted: dict[str, set[int]], fields: int = BASE_FIELDS
) -> dict[str, dict[int, int]]:
    """The k-th smallest key (0-based) of each metric for each k in ``wanted[metric]``, exactly,
    in a few passes over the record file and with memory bounded independently of its length.

    Each pass counts the keys of every unresolved rank's interval into ``_BINS`` bins and narrows
    the interval to the bin that holds the rank; once that bin holds at most ``_COLLECT`` keys (or
    one value), one more pass gathers them and the rank is read off sorted. Keys are int64, so
    the interval shrinks by ``_BINS``× a pass: at most six passes for any range.
    """
    lo = {m: None for m in wanted}
    hi = dict(lo)
    for raw in _records(sink, fields):
        for m, v in _latency_keys(raw).items():
            if m in wanted and v.size:
                a, b = int(v.min()), int(v.max())
                lo[m] = a if lo[m] is None else min(lo[m], a)
                hi[m] = b if hi[m] is None else max(hi[m], b)
    # Per (metric, rank): [lo, hi, keys below lo, collect?]
    state = {(m, k): [lo[m], hi[m], 0, False] for m, ks in wanted.items() for k in ks}
    result: dict[str, dict[int, int]] = {m: {} for m in wanted}
    while state:
        for (m, k), st in list(state.items()):
            if st[0] == st[1]:
                result[m][k] = st[0]
                del state[(m, k)]
        if not state:
            break
        counts = {key: None for key in state}
        gathered: dict[tuple, list] = {key: [] for key, st in state.items() if st[3]}
        for raw in _records(sink, fields):
            keys = _latency_keys(raw)
            for key, (a, b, _, collect) in state.items():
                v = keys[key[0]]
                v = v[(v >= a) & (v <= b)]
                if collect:
                    gathered[key].append(v)
                    continue
                width = -(-(b - a + 1) // _BINS)
                c = np.bincount((v - a) // width, minlength=_BINS)
                counts[key] = c if counts[key] is None else counts[key] + c
        for key, st in list(state.items()):
            m, k = key
            a, b, below, collect = st
            if collect:
                v = np.sort(np.concatenate(gathered[key]))
                result[m][k] = int(v[k - below])
                del state[key]
                continue
            width = -(-(b - a + 1) // _BINS)
            cum = np.cumsum(counts[key])
            j = int(np.searchsorted(cum, k - below, side="right"))
            before = int(cum[j - 1]) if j else 0
            st[0], st[1] = a + j * width, min(b, a + (j + 1) * width - 1)
            st[2] = below + before
            st[3] = int(cum[j]) - before <= _COLLECT
    return result


def _quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """Neighbouring ranks and weight of quantile ``q`` of n sorted values (numpy's default
    'linear' method, Hyndman & Fan type 7, computed with the same operations)."""
    virtual = (n - 1) * q
    prev = math.floor(virtual)
    gamma = virtual - prev
    prev = min(max(prev, 0), n - 1)
    return prev, min(prev + 1, n - 1), gamma


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation between neighbours (exact at both ends)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


_PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99))


def _latency_summaries(rec: Recorder) -> dict[str, dict[str, float]]:
    """Mean and exact p50/p90/p99 of TTFT, TPOT and E2E (seconds) from the record file."""
    counts = {
        "ttft_s": rec.finished_count,
        "tpot_s": rec.tpot_count,
        "e2e_s": rec.finished_count,
        "job_latency_s": rec.jobs,
        "queue_s": rec.finished_count,
    }
    if rec.handoff:
        counts["handoff_s"] = rec.handoffs
    wanted: dict[str, set[int]] = {}
    for m, n in counts.items():
        if n:
            wanted[m] = {r for _, p in _PERCENTILES for r in _quantile_ranks(n, p / 100)[:2]}
    stats = _order_statistics(rec.sink, wanted, rec.record.size // 8) if wanted else {}

    def seconds(m: str, key: int) -> float:
        if m == "tpot_s":
            return float(np.int64(key).view(np.float64))
        return key / NS

    out = {}
    means = {
        "ttft_s": rec.ttft_ns_sum / NS,
        "tpot_s": rec.tpot_sum,
        "e2e_s": rec.e2e_ns_sum / NS,
        "job_latency_s": rec.job_ns_sum / NS,
        "queue_s": rec.queue_ns_sum / NS,
        "handoff_s": rec.handoff_ns_sum / NS,
    }
    for m, n in counts.items():
        if not n:
            out[m] = {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
            continue
        d = {"mean": means[m] / n}
        for name, p in _PERCENTILES:
            i, j, g = _quantile_ranks(n, p / 100)
            d[name] = _lerp(seconds(m, stats[m][i]), seconds(m, stats[m][j]), g)
        out[m] = d
    return out


def _dropped(s: dict, before: str, after: str) -> str:
    """``(3 dropped: 2 rejected: queue full, 1 needs more KV blocks …)``, or nothing."""
    if not s["dropped"]:
        return ""
    reasons = sorted(s["drop_reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{before}{s['dropped']} dropped: " + ", ".join(f"{n} {r}" for r, n in reasons) + after


def _estimated_note(s: dict) -> list[str]:
    n = s.get("lengths_estimated_requests")
    if not n:
        return []
    return [f"note: token counts of {n} requests are estimated from text (characters / 4)", ""]


def _utilisation(s: dict, lead: bool = True) -> str:
    """What utilisation is, with the saturated and busy shares (see ``usage``)."""
    head = f"{s['utilisation']:.1%} " if lead else ""
    return (
        f"{head}of batch capacity (saturated {s['saturated_fraction']:.1%} of the time; an "
        f"iteration running {s['busy_fraction']:.0%} of the time)"
    )


def _kv_use(s: dict, lead: bool = True) -> str:
    k = s["kv_use"]
    head = f"{k['mean']:.1%} " if lead else ""
    return f"{head}of blocks held on average, {k['peak']:.1%} at the peak (sampled)"


class Results:
    """What a run produced: ``summary`` (a dict), ``requests`` (rows), CSV text."""

    def __init__(self, rec: Recorder, info: dict):
        self.timeseries = None
        """Queue lengths over time (``timeseries.QueueSeries``), set by the cluster's run."""
        self._sink = rec.sink
        self._record = rec.record
        self._reasons = rec.reason_list
        self.end_s = rec.last_event_ns / NS
        """The last finish or drop recorded, in seconds from the start."""
        n, done = rec.count, rec.finished_count
        t0 = rec.first_arrival_ns or 0
        t1 = rec.last_finish_ns if rec.last_finish_ns is not None else t0
        span = (t1 - t0) / NS
        lat = _latency_summaries(rec)
        self.summary = {
            "scenario": info.get("scenario", ""),
            **({"warmup_requests": rec.warmup} if rec.warmup else {}),
            **({"lengths_estimated_requests": rec.estimated} if rec.estimated else {}),
            "requests": n,
            "finished": done,
            "dropped": n - done,
            "drop_reasons": dict(sorted(rec.drop_reasons.items())),
            "duration_s": span,
            "ttft_s": lat["ttft_s"],
            "tpot_s": lat["tpot_s"],
            "e2e_s": lat["e2e_s"],
            "queue_s": lat["queue_s"],
            "jobs": rec.jobs,
            "job_latency_s": lat["job_latency_s"],
            "throughput": {
                "requests_per_s": done / span if span > 0 else math.nan,
                "output_tokens_per_s": rec.output_done / span if span > 0 else math.nan,
                "total_tokens_per_s": (rec.prompt_done + rec.output_done) / span
                if span > 0
                else math.nan,
            },
            "prefix_hit_ratio": rec.hit_units / rec.units if rec.units else 0.0,
            "token_hit_ratio": rec.hit_tokens_done / rec.prompt_done if rec.prompt_done else 0.0,
            "request_hit_ratio": rec.hit_requests / done if done else 0.0,
            "slo": {
                "ttft_s": rec.slo_ttft_s,
                "tpot_s": rec.slo_tpot_s,
                "attainment": rec.meets_slo / n if n else math.nan,
                "goodput_requests_per_s": rec.meets_slo / span if span > 0 else math.nan,
            },
            "preemptions": rec.preemptions,
            "recomputed_tokens": rec.recomputed,
            **info.get("extra", {}),
        }
        self._handoff, self._cpu_tier = rec.handoff, rec.cpu_tier
        self.link_series: dict = {}
        """Busy fraction over time of each link: {name: (bin starts s, fractions)}."""
        if rec.handoff:
            k = rec.handoffs

            def mean(total):
                return total / k / NS if k else math.nan

            self.summary["transfer"] = {
                **info.get("transfer", {}),
                "handoffs": k,
                "payload_bytes": rec.payload_bytes,
                "payload_bytes_mean": rec.payload_bytes / k if k else math.nan,
                "wait_s_mean": mean(rec.wait_ns_sum),
                "transfer_s_mean": mean(rec.transfer_ns_sum),
                "producer_codec_s_mean": mean(rec.producer_codec_ns_sum),
                "consumer_codec_s_mean": mean(rec.consumer_codec_ns_sum),
                "handoff_s": lat["handoff_s"],
            }
        if rec.cpu_tier:
            units = rec.units
            self.summary["cpu_tier"] = {
                "hit_ratio_gpu": (rec.hit_units - rec.cpu_hit_units) / units if units else 0.0,
                "hit_ratio_cpu": rec.cpu_hit_units / units if units else 0.0,
                **info.get("cpu_tier", {}),
            }

    @property
    def column_names(self) -> tuple[str, ...]:
        """requests.csv's columns: the base ones, then the hand-off's and the CPU tier's where
        the cluster has them."""
        return (
            COLUMNS
            + (HANDOFF_COLUMNS if self._handoff else ())
            + (CPU_COLUMNS if self._cpu_tier else ())
        )

    def write_requests_csv(self, out) -> None:
        """Write the per-request table (rows in completion order) to a text file object."""
        from . import requests_csv

        out.write(",".join(self.column_names) + "\n")
        for raw in _records(self._sink, self._record.size // 8, requests_csv.CHUNK_ROWS):
            out.write(requests_csv.rows(raw, self._handoff, self._cpu_tier, self._reasons))

    def records(self):
        """The per-request records as int64 arrays of shape (rows, fields), a chunk of at most
        4,096 rows at a time, in completion order (bounded memory: what reports stream)."""
        return _records(self._sink, self._record.size // 8)

    def columns(self, names=None) -> dict[str, np.ndarray]:
        """requests.csv as numpy arrays, one per column, rows ordered by request id (as
        :attr:`requests`); no pandas needed.

        Whole-number columns (:data:`INT_COLUMNS`) are int64, with -1 where requests.csv is empty
        (``replica`` of a dropped request, ``session`` outside one); times are float64 seconds,
        NaN where empty (a dropped request's, TPOT of a one-token answer); ``status`` is an array
        of str. Times are the exact nanosecond counts in seconds (requests.csv rounds TPOT to the
        nanosecond). ``names``: the columns wanted (default: every column); memory is about 8
        bytes per request per column."""
        all_columns = self.column_names
        wanted = list(all_columns) if names is None else list(names)
        unknown = [c for c in wanted if c not in all_columns]
        if unknown:
            raise KeyError(f"no column {unknown[0]!r}; columns: {', '.join(all_columns)}")
        self._sink.flush()
        self._sink.seek(0)
        raw = np.frombuffer(self._sink.read(), dtype="<i8").reshape(-1, self._record.size // 8)
        self._sink.seek(0, io.SEEK_END)
        raw = raw[np.argsort(raw[:, 0], kind="stable")]
        done = raw[:, F["status"]] < 0
        arr, first = raw[:, F["arrival_ns"]], raw[:, F["first_ns"]]
        fin, out = raw[:, F["finish_ns"]], raw[:, F["output_tokens"]]

        times = {"arrival_s": (arr, True), "first_token_s": (first, done),
                 "finish_s": (fin, done), "ttft_s": (first - arr, done),
                 "e2e_s": (fin - arr, done),
                 "job_latency_s": (raw[:, F["job_ns"]], raw[:, F["job_ns"]] >= 0),
                 "queue_s": (raw[:, F["queue_ns"]], raw[:, F["queue_ns"]] >= 0)}  # fmt: skip

        def seconds(ns, where):
            return np.where(where, ns / NS, np.nan)

        def column(name: str) -> np.ndarray:
            if name == "tpot_s":
                multi = done & (out > 1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    return np.where(multi, (fin - first) / NS / np.maximum(out - 1, 1), np.nan)
            if name == "status":
                reasons = np.array(["done"] + [f"dropped: {r}" for r in self._reasons])
                return reasons[raw[:, F["status"]] + 1]
            if name in INT_COLUMNS:
                return raw[:, F[_FIELD_OF.get(name, name)]].copy()
            if name in times:
                ns, where = times[name]
            else:  # a hand-off's time: -1 where it does not apply
                ns = raw[:, F[name[:-2] + "_ns"]]
                where = ns >= 0
            return seconds(ns, where)

        return {name: column(name) for name in wanted}

    def table_rows(self) -> list[tuple[str, str]]:
        """The summary as (label, value) pairs, for reports."""
        s = self.summary

        def pct(d):
            return " / ".join(f"{d[k] * 1e3:.1f}" for k in ("p50", "p90", "p99")) + " ms"

        tp = s["throughput"]
        rows = [
            (
                "requests",
                f"{s['finished']} finished of {s['requests']}{_dropped(s, ' (', ')')}"
                + (
                    f"; token counts of {s['lengths_estimated_requests']} estimated from text "
                    "(characters / 4)"
                    if s.get("lengths_estimated_requests")
                    else ""
                ),
            ),
            ("TTFT p50 / p90 / p99", pct(s["ttft_s"])),
            ("TPOT p50 / p90 / p99", pct(s["tpot_s"])),
            ("E2E p50 / p90 / p99", pct(s["e2e_s"])),
            ("queueing delay p50 / p90 / p99", pct(s["queue_s"])),
            *(
                [
                    (
                        "job latency p50 / p90 / p99",
                        pct(s["job_latency_s"]) + f" ({s['jobs']} sessions)",
                    )
                ]
                if s["jobs"]
                else []
            ),
            (
                "throughput",
                f"{tp['requests_per_s']:.2f} req/s, {tp['output_tokens_per_s']:.0f} output tok/s",
            ),
            ("prefix-hit ratio", f"{s['prefix_hit_ratio']:.1%} of content units"),
            (
                "SLO attainment",
                f"{s['slo']['attainment']:.1%} (TTFT ≤ {s['slo']['ttft_s']} s, "
                f"TPOT ≤ {s['slo']['tpot_s'] * 1e3:.0f} ms): goodput "
                f"{s['slo']['goodput_requests_per_s']:.2f} req/s",
            ),
            ("preemptions", f"{s['preemptions']} ({s['recomputed_tokens']} tokens recomputed)"),
        ]
        if "gpus" in s:
            blocks = "" if "pools" in s else f" ({s['kv_blocks_per_replica']} KV blocks/replica)"
            rows.append(("GPUs", f"{s['gpus']}{blocks}"))
        if "utilisation" in s:
            rows.append(("utilisation", _utilisation(s)))
            rows.append(("KV cache use", _kv_use(s)))
        rows += self._feature_rows()
        if "checkpoints" in s:
            c = s["checkpoints"]
            rows.append(
                (
                    "checkpoints",
                    f"{c['stored']} stored, {c['gb_mean']:.2f} GB held on average "
                    f"({c['gb_peak']:.2f} GB peak, {c['resident_end']} at the end)",
                )
            )
        if "latency_model" in s:
            rows.append(("latency model", s["latency_model"]))
        return rows

    def _feature_rows(self) -> list[tuple[str, str]]:
        """Rows for a CPU tier, pools and a hand-off, where the run had them."""
        s = self.summary
        rows = []
        tiers = s.get("cpu_tier")
        if tiers is not None:
            t = tiers if "hit_ratio_cpu" in tiers else next(iter(tiers.values()))
            loaded = t.get("loaded_bytes")
            more = f"  ({t['loads']} loads, {loaded / 1e9:.3g} GB over PCIe)" if loaded else ""
            rows.append(
                (
                    "prefix hits by tier",
                    f"GPU {t['hit_ratio_gpu']:.1%}, CPU {t['hit_ratio_cpu']:.1%}{more}",
                )
            )
        for name, p in s.get("pools", {}).items():
            rows.append(
                (
                    f"pool {name}",
                    f"{p['replicas']}× {p['hardware']} TP{p['tensor_parallel']} "
                    f"{p['model']}, {p['kv_blocks_per_replica']} KV blocks, "
                    f"busy {p['busy_fraction']:.0%}",
                )
            )
        t = s.get("transfer")
        if t is not None:
            h = t["handoff_s"]
            text = f"{t['codec']}, first token on the {t['first_token']}: {t['handoffs']} hand-offs"
            if t["handoffs"]:
                text += (
                    f", {t['payload_bytes_mean'] / 1e6:.1f} MB and "
                    f"{t['transfer_s_mean'] * 1e3:.1f} ms on the link on average; "
                    f"p50 {h['p50'] * 1e3:.1f} ms to the decode side's first token"
                )
            rows.append(("hand-off", text))
        for name, link in s.get("links", {}).items():
            rows.append(
                (
                    f"link {name}",
                    f"{link['bandwidth_gbit_per_s']:g} Gbit/s, busy "
                    f"{link['utilisation']:.1%} of the time",
                )
            )
        return rows  # fmt: skip

    def requests_csv(self) -> str:
        """The per-request table as CSV text (rows in completion order)."""
        buf = io.StringIO()
        self.write_requests_csv(buf)
        return buf.getvalue()

    @property
    def requests(self) -> list[dict]:
        """One dict per request, ordered by request id: requests.csv's values as numbers (int
        for whole-number columns, float for seconds), None where requests.csv is empty, and
        ``status`` as text."""
        reader = csv.reader(io.StringIO(self.requests_csv()))
        header = next(reader)
        kinds = [int if c in INT_COLUMNS else str if c == "status" else float for c in header]
        rows = [
            {
                c: (k(v) if v != "" or k is str else None)
                for c, k, v in zip(header, kinds, row, strict=True)
            }
            for row in reader
        ]
        return sorted(rows, key=lambda r: r["id"])

    def table(self) -> str:
        """The summary as a fixed-width table for the terminal."""
        s = self.summary

        def ms(d):
            return " ".join(
                f"{'-':>9}" if math.isnan(d[k]) else f"{d[k] * 1e3:9.1f}"
                for k in ("p50", "p90", "p99")
            )

        tp = s["throughput"]
        lines = [
            *_estimated_note(s),
            f"{'':26}{'p50':>9} {'p90':>9} {'p99':>9}",
            f"{'TTFT (ms)':26}{ms(s['ttft_s'])}",
            f"{'TPOT (ms)':26}{ms(s['tpot_s'])}",
            f"{'E2E latency (ms)':26}{ms(s['e2e_s'])}",
            f"{'queueing delay (ms)':26}{ms(s['queue_s'])}",
            *(
                [f"{'job latency (ms)':26}{ms(s['job_latency_s'])}  ({s['jobs']} sessions)"]
                if s["jobs"]
                else []
            ),
            "",
            f"{'requests finished':26}{s['finished']:>9} of {s['requests']}"
            + _dropped(s, "  (", ")"),
            f"{'simulated span':26}{s['duration_s']:>9.1f} s",
            f"{'throughput':26}{tp['requests_per_s']:>9.2f} req/s  "
            f"{tp['output_tokens_per_s']:.0f} output tok/s",
            f"{'prefix-hit ratio':26}{s['prefix_hit_ratio']:>9.1%} of content units  "
            f"({s['token_hit_ratio']:.1%} of prompt tokens reused, "
            f"{s['request_hit_ratio']:.1%} of requests hit)",
            f"{'SLO attainment':26}{s['slo']['attainment']:>9.1%}  "
            f"(TTFT <= {s['slo']['ttft_s']} s, TPOT <= {s['slo']['tpot_s'] * 1e3:.0f} ms)",
            f"{'goodput':26}{s['slo']['goodput_requests_per_s']:>9.2f} req/s  "
            "(requests meeting both SLOs)",
            f"{'preemptions':26}{s['preemptions']:>9}  "
            f"({s['recomputed_tokens']} tokens recomputed)",
        ]
        if "gpus" in s:
            blocks = "" if "pools" in s else f"{s['kv_blocks_per_replica']} KV blocks per replica, "
            lines.append(f"{'GPUs':26}{s['gpus']:>9}  ({blocks}{s['evictions']} evictions)")
        if "utilisation" in s:
            lines.append(f"{'utilisation':26}{s['utilisation']:>9.1%}  {_utilisation(s, False)}")
            lines.append(f"{'KV cache use':26}{s['kv_use']['mean']:>9.1%}  {_kv_use(s, False)}")
        lines += [f"{label:26}{text}" for label, text in self._feature_rows()]
        if "checkpoints" in s:
            c = s["checkpoints"]
            lines.append(
                f"{'checkpoints':26}{c['stored']:>9} stored  ({c['gb_mean']:.2f} GB held on "
                f"average, {c['resident_end']} at the end)"
            )
        if "latency_model" in s:
            lines.append(f"{'latency model':26}{s['latency_model']}")
        return "\n".join(lines)
