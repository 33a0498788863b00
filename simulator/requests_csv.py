"""requests.csv's rows, formatted a chunk of packed records at a time with numpy: the bytes that
formatting each row in Python gives (:func:`exact_rows`, which still formats what the fast path
cannot format exactly), several times faster on a large run.

Each cell becomes ASCII in a byte matrix (one row per record, the cell's text right-aligned in
the width of its longest) with a mask of the bytes that are written; the cells of a chunk side by
side, separators included, are its CSV text once the mask selects them (boolean indexing walks
the matrix in row-major order).

Exactness. A time of ``ns`` integer nanoseconds is written as ``f"{ns / 1e9:.9f}"``. Below 2^23 s
(97 days) that is the exact decimal of ns·10⁻⁹: the division is correctly rounded, so the double
is within half an ulp (at most 2^-31 s, under half a nanosecond) of ns·10⁻⁹, and ``.9f`` rounds it
to the nearest nanosecond, ns itself. TPOT, ``d / 1e9 / k`` (d the finish minus the first token
in ns, k the output tokens after the first), takes two correctly rounded divisions: the double is
within 2^-52 relative of d/k ns, so ``.9f`` prints the integer nearest to d/k unless d/k lies
within d·2^-51 of a half-integer; those few cells are formatted by Python. A chunk holding a time
at or beyond 2^23 s, or a negative number where a count is written, is formatted by
:func:`exact_rows`.
"""

from __future__ import annotations

import numpy as np

from .metrics import BASE_FIELDS, F
from .metrics import NS as _NS

CHUNK_ROWS = 8192
"""Records formatted together (about 2 MB of byte matrix: the chunk stays in cache)."""
EXACT_LIMIT_NS = 2**23 * 10**9
"""Times below this print as their exact decimal (see the module docstring)."""
_SEC = 10**9
_CPU_FIELD = F["cpu_hit_units"]
_QUAD = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode(), np.uint8).reshape(
    10_000, 4
)
"""The four ASCII digits of every number below 10,000 (a digit matrix takes rows of it)."""


class _NotExact(Exception):
    """A chunk holds a value the fast path does not format exactly."""


def _digits(v: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative ``v``, zero-padded on the left to ``width`` columns."""
    limbs = []
    q = v
    for _ in range(-(-width // 4)):
        nq = q // 10_000
        limbs.append(np.take(_QUAD, q - nq * 10_000, axis=0))
        q = nq
    d = limbs[0] if len(limbs) == 1 else np.concatenate(limbs[::-1], axis=1)
    return d[:, d.shape[1] - width :]


def _count(v: np.ndarray, present=None) -> tuple[np.ndarray, np.ndarray]:
    """A column of whole numbers (written as ``str(v)``; none where ``present`` is False) as a
    byte matrix and its mask."""
    shown = v if present is None else v[present]
    if shown.size and shown.min() < 0:
        raise _NotExact
    width = len(str(int(shown.max()))) if shown.size else 1
    b = _digits(v if present is None else np.where(present, v, 0), width)
    valid = b != 48
    for j in range(1, width - 1):  # leading zeros are not written, a last digit always is
        valid[:, j] |= valid[:, j - 1]
    valid[:, width - 1] = True
    if present is not None:
        valid &= present[:, None]
    return b, valid


def _seconds(ns: np.ndarray, present=None) -> tuple[np.ndarray, np.ndarray]:
    """A column of times in integer ns written as seconds with nine decimals (none where
    ``present`` is False)."""
    shown = ns if present is None else ns[present]
    if shown.size and (shown.min() < 0 or shown.max() >= EXACT_LIMIT_NS):
        raise _NotExact
    whole, frac = np.divmod(ns if present is None else np.where(present, ns, 0), _SEC)
    b, valid = _count(whole, present)
    n = len(ns)
    dot = np.full((n, 1), ord("."), np.uint8)
    tail = np.ones((n, 10), bool) if present is None else np.repeat(present[:, None], 10, 1)
    return (np.concatenate([b, dot, _digits(frac, 9)], axis=1),
            np.concatenate([valid, tail], axis=1))  # fmt: skip


def _tpot(d_ns: np.ndarray, k: np.ndarray, present: np.ndarray):
    """TPOT cells, ``d_ns / 1e9 / k`` written with nine decimals where ``present``."""
    d, kk = np.where(present, d_ns, 0), np.where(present, k, 1)
    if d.min() < 0 or d.max() >= EXACT_LIMIT_NS:
        raise _NotExact
    q, r = np.divmod(d, kk)
    units = q + (2 * r > kk)  # d/k ns to the nearest integer
    # NOTE: where d/k is within d·2^-49 of a half-integer (4× the bound of the module docstring)
    # the two roundings could tip it: Python formats those.
    near = present & (np.abs(2 * r - kk) <= d * 2.0**-49)
    for i in np.flatnonzero(near).tolist():
        units[i] = int(f"{int(d_ns[i]) / _NS / int(k[i]):.9f}".replace(".", ""))
    return _seconds(units, present)


def _text(index: np.ndarray, table: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """A column of ``table[index]`` (left-aligned)."""
    width = max(map(len, table))
    rows = np.frombuffer(b"".join(t.ljust(width, b"\0") for t in table), np.uint8)
    lengths = np.array([len(t) for t in table])
    return rows.reshape(len(table), width)[index], np.arange(width) < lengths[index][:, None]


def _fast_rows(raw: np.ndarray, handoff: bool, cpu: bool, reasons: list[str]) -> str:
    """The CSV rows of ``raw`` (records as int64, shape (n, fields)); raises ``_NotExact``."""
    c = np.ascontiguousarray(raw.T)  # a field's values side by side
    n = len(raw)
    rid, arr, first, fin, prompt, out, hit_t, hit_u, units, recomp, pre, rep, status = c[:13]
    session, turn, job, queue = c[13:BASE_FIELDS]
    done = status < 0
    ran = None if done.all() else done  # finished rows: None (all) or a mask

    def ran_or_zero(v):  # a dropped row writes 0 for what it never did
        return v if ran is None else np.where(done, v, 0)

    cells = [
        _count(rid), _seconds(arr), _seconds(first, ran), _seconds(fin, ran),
        _seconds(first - arr, ran), _tpot(fin - first, out - 1, done & (out > 1)),
        _seconds(fin - arr, ran), _count(prompt), _count(out), _count(ran_or_zero(hit_t)),
        _count(ran_or_zero(hit_u)), _count(units), _count(ran_or_zero(recomp)),
        _count(ran_or_zero(pre)), _count(rep, ran),
        _text(status + 1, [b"done"] + [f"dropped: {r}".encode() for r in reasons]),
        _count(session, session >= 0), _count(turn), _seconds(job, job >= 0),
        _seconds(queue, queue >= 0),
    ]  # fmt: skip
    if handoff:
        for v in c[BASE_FIELDS : BASE_FIELDS + 3]:  # the replicas and the payload
            cells.append(_count(v, v >= 0))
        for v in c[BASE_FIELDS + 3 : BASE_FIELDS + 8]:  # the waits and codec times
            cells.append(_seconds(v, v >= 0))
    if cpu:
        cells.append(_count(c[_CPU_FIELD]))
    comma = (np.full((n, 1), ord(","), np.uint8), np.ones((n, 1), bool))
    newline = (np.full((n, 1), ord("\n"), np.uint8), comma[1])
    parts = [comma] * (2 * len(cells) - 1) + [newline]
    parts[::2] = cells
    text = np.concatenate([b for b, _ in parts], axis=1)
    valid = np.concatenate([v for _, v in parts], axis=1)
    return text[valid].tobytes().decode("utf-8")


def exact_rows(raw: np.ndarray, handoff: bool, cpu: bool, reasons: list[str]) -> str:
    """The CSV rows of ``raw`` formatted one by one in Python (the definition of the format)."""
    lines = []
    for rec in raw.tolist():
        (rid, arr, first, fin, p, o, ht, hu, u, rc, pre, rep, status, ses, turn, job,
         q) = rec[:BASE_FIELDS]  # fmt: skip
        extra = ""
        if handoff:
            extra += "," + ",".join(
                ("" if v < 0 else str(v)) if i < 3 else ("" if v < 0 else f"{v / _NS:.9f}")
                for i, v in enumerate(rec[BASE_FIELDS : BASE_FIELDS + 8])
            )
        if cpu:
            extra += f",{rec[_CPU_FIELD]}"
        tail = (f"{'' if ses < 0 else ses},{turn},"
                f"{'' if job < 0 else f'{job / _NS:.9f}'},"
                f"{'' if q < 0 else f'{q / _NS:.9f}'}{extra}\n")  # fmt: skip
        if status >= 0:
            lines.append(
                f"{rid},{arr / _NS:.9f},,,,,,{p},{o},0,0,{u},0,0,,dropped: {reasons[status]},{tail}"
            )
            continue
        tpot = f"{(fin - first) / _NS / (o - 1):.9f}" if o > 1 else ""
        ttft, e2e = (first - arr) / _NS, (fin - arr) / _NS
        lines.append(
            f"{rid},{arr / _NS:.9f},{first / _NS:.9f},{fin / _NS:.9f},{ttft:.9f},{tpot},"
            f"{e2e:.9f},{p},{o},{ht},{hu},{u},{rc},{pre},{rep},done,{tail}"
        )
    return "".join(lines)


def rows(raw: np.ndarray, handoff: bool, cpu: bool, reasons: list[str]) -> str:
    """The CSV rows of ``raw``: by the fast path where it is exact, else one by one."""
    try:
        return _fast_rows(raw, handoff, cpu, reasons)
    except _NotExact:
        return exact_rows(raw, handoff, cpu, reasons)
