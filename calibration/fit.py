"""Fit latency models to kernel measurements and write calibration profiles (DESIGN §7).

Each op gets the roofline-grounded form of ``kvsim.simulator.latency.profile.predict``:
``t = launch + max(s_per_flop·flops, s_per_byte·bytes) + Σ coef_k·feature_k``, all parameters
non-negative. The fit minimizes relative error (times span orders of magnitude) with scipy's
bounded trust-region least squares, started from a non-negative linear least-squares solution.
Quality is held-out error: 5-fold cross-validation (deterministic folds), reporting the mean
absolute percentage error and the worst relative error; the parameters written are a fit on all
points.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares, nnls

from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency.ops import OP_KINDS
from kvsim.simulator.latency.profile import NOT_MEASURABLE_ON_ONE_GPU, PROFILE_VERSION, predict

# Linear extra terms per op: costs the roofline does not see.
EXTRA_TERMS = {"attention": ("segments", "seqs"), "ssm_step": ("batch",)}
MEASUREMENT_COLUMNS = ("op", "seconds", "features", "device", "driver", "cuda", "torch", "triton",
                       "date")  # fmt: skip


@dataclass
class Measurement:
    op: str
    features: dict
    seconds: float


@dataclass
class OpFitResult:
    params: dict
    heldout_mape: float
    heldout_max_error: float
    points: int
    ranges: dict


def _design(kind: str, rows: list[Measurement]):
    cls = OP_KINDS[kind]
    ops = [cls(**r.features) for r in rows]
    flops = np.array([o.flops() for o in ops], dtype=np.float64)
    nbytes = np.array([o.bytes() for o in ops], dtype=np.float64)
    extras = {name: np.array([r.features[name] for r in rows], dtype=np.float64)
              for name in EXTRA_TERMS.get(kind, ())}  # fmt: skip
    t = np.array([r.seconds for r in rows], dtype=np.float64)
    return flops, nbytes, extras, t


def _unpack(theta, scales, names) -> dict:
    p = theta * scales
    return {"launch_s": float(p[0]), "s_per_flop": float(p[1]), "s_per_byte": float(p[2]),
            "extra": {n: float(v) for n, v in zip(names, p[3:], strict=True)}}  # fmt: skip


def fit_arrays(flops, nbytes, extras: dict, t) -> dict:
    """Non-negative parameters of the roofline form for one op's points.

    The max() makes the least-squares problem non-convex: started from the fit of a sum of the
    terms, the optimizer can settle with one of the rates at 0. Each split of the points at an
    arithmetic intensity (FLOP per byte) — those below priced by their bytes, those above by
    their FLOPs — is a linear problem that NNLS solves exactly; the split whose solution fits the
    max form best, and the sum fit, start the bounded trust-region refinement, and the best of
    the results is kept. Exact points of the form are fitted exactly (a test pins it)."""
    names = list(extras)
    n = len(t)
    cols = [np.ones_like(t), flops, nbytes] + [extras[k] for k in names]
    # Scale each column so that its typical contribution is of the order of a typical time.
    typical = np.median(t)
    col_med = np.array([np.median(np.abs(c)) if np.any(c) else 1.0 for c in cols])
    scales = typical / np.where(col_med > 0, col_med, 1.0)
    w = 1.0 / t  # relative error
    a = np.stack(cols, axis=1) * scales * w[:, None]

    def residual(theta):
        return predict(_unpack(theta, scales, names), flops, nbytes, extras) / t - 1.0

    def cost(theta):
        return float(np.sum(residual(theta) ** 2))

    starts = [nnls(a, t * w)[0]]
    order = np.argsort(flops / np.where(nbytes > 0, nbytes, 1.0), kind="stable")
    split = []
    for k in range(n + 1):
        memory_bound = np.zeros(n, dtype=bool)
        memory_bound[order[:k]] = True
        ak = a.copy()
        ak[memory_bound, 1] = 0.0
        ak[~memory_bound, 2] = 0.0
        split.append(nnls(ak, t * w)[0])
    starts.append(min(split, key=cost))
    results = []
    for x0 in starts:
        x0 = np.maximum(x0, 1e-9)
        sol = least_squares(residual, x0, bounds=(0.0, np.inf), method="trf", x_scale="jac",
                            max_nfev=2000)  # fmt: skip
        results += [x0, sol.x]
    return _unpack(min(results, key=cost), scales, names)


def fit_op(kind: str, rows: list[Measurement], folds: int = 5, seed: int = 0) -> OpFitResult:
    """Fit one op and measure its held-out error with k-fold cross-validation."""
    if len(rows) < 4:
        raise KvsimError(f"op {kind!r}: {len(rows)} measurements are too few to fit (need 4+)")
    flops, nbytes, extras, t = _design(kind, rows)
    k = min(folds, len(rows))
    order = np.random.default_rng(seed).permutation(len(rows))
    errors = np.empty(len(rows))
    for f in range(k):
        test = order[f::k]
        train = np.setdiff1d(order, test)
        p = fit_arrays(flops[train], nbytes[train], {n: v[train] for n, v in extras.items()},
                       t[train])  # fmt: skip
        pred = predict(p, flops[test], nbytes[test], {n: v[test] for n, v in extras.items()})
        errors[test] = np.abs(pred - t[test]) / t[test]
    params = fit_arrays(flops, nbytes, extras, t)
    names = [n for n in rows[0].features if n != "path"]
    ranges = {n: [float(min(r.features[n] for r in rows)), float(max(r.features[n] for r in rows))]
              for n in names if isinstance(rows[0].features[n], (int, float))}  # fmt: skip
    return OpFitResult(params, float(errors.mean()), float(errors.max()), len(rows), ranges)


def read_measurements(path: str | Path) -> tuple[list[Measurement], dict]:
    """Measurements and the device metadata from a calibration CSV."""
    path = Path(path)
    if not path.is_file():
        raise KvsimError(f"{path}: measurements file not found")
    rows, meta = [], {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MEASUREMENT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise KvsimError(f"{path}:1: missing column {missing[0]!r}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if row["op"] not in OP_KINDS:
                raise KvsimError(f"{where}: field 'op' is {row['op']!r}; known: {sorted(OP_KINDS)}")
            try:
                seconds = float(row["seconds"])
                features = json.loads(row["features"])
            except (ValueError, json.JSONDecodeError):
                raise KvsimError(f"{where}: bad 'seconds' or 'features' value") from None
            if not seconds > 0:
                raise KvsimError(f"{where}: field 'seconds' is {row['seconds']!r}; must be > 0")
            rows.append(Measurement(row["op"], features, seconds))
            meta = {k: row[k] for k in MEASUREMENT_COLUMNS[3:]}
    return rows, meta


def write_measurements(path: str | Path, rows: list[Measurement], meta: dict) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(MEASUREMENT_COLUMNS)
        for r in rows:
            w.writerow([r.op, repr(r.seconds), json.dumps(r.features, sort_keys=True),
                        *(meta.get(k, "") for k in MEASUREMENT_COLUMNS[3:])])  # fmt: skip


def build_profile(rows: list[Measurement], meta: dict, grid: dict | None = None) -> dict:
    """A profile document from measurements: one fit per op measured."""
    by_op: dict[str, list[Measurement]] = {}
    for r in rows:
        by_op.setdefault(r.op, []).append(r)
    ops = {}
    for kind in sorted(by_op):
        res = fit_op(kind, by_op[kind])
        ops[kind] = {
            "form": "launch_s + max(s_per_flop * flops, s_per_byte * bytes) + sum(extra * feature)",
            "params": res.params,
            "ranges": res.ranges,
            "points": res.points,
            "heldout_mape": round(res.heldout_mape, 6),
            "heldout_max_error": round(res.heldout_max_error, 6),
        }
    return {
        "kvsim_profile": PROFILE_VERSION,
        "device": meta,
        "grid": grid or {},
        "ops": ops,
        "not_measured": {
            k: (
                "host-side time of the serving engine"
                if k == "step_overhead"
                else "needs several GPUs"
            )
            for k in NOT_MEASURABLE_ON_ONE_GPU
        },  # fmt: skip
    }


def write_profile(path: str | Path, profile: dict) -> None:
    Path(path).write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")


def fit_file(measurements: str | Path, out: str | Path) -> dict:
    """``kvsim fit``: refit a profile from a measurements CSV."""
    rows, meta = read_measurements(measurements)
    if not rows:
        raise KvsimError(f"{measurements}: no measurements")
    profile = build_profile(rows, meta, {"measurements": Path(measurements).name})
    write_profile(out, profile)
    return profile
