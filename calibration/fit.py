"""Fit latency models to kernel measurements and write calibration profiles (DESIGN §7).

Each op gets the roofline-grounded form of ``kvsim.simulator.latency.profile.predict``:
``t = launch + max(s_per_flop·flops, s_per_byte·bytes) + Σ coef_k·feature_k``, all parameters
non-negative. The fit minimizes relative error (times span orders of magnitude) with scipy's
bounded trust-region least squares, started from a non-negative linear least-squares solution.
Quality is held-out error: 5-fold cross-validation (deterministic folds), reporting the mean
absolute percentage error and the worst relative error; the parameters written are a fit on all
points.

A profile is refused (not written) when an op's held-out MAPE or worst error exceeds the limits
(``profile.MAX_HELDOUT_MAPE``, ``profile.MAX_HELDOUT_ERROR`` by default), unless the user accepts
it explicitly; the profile then records the limits and the ops accepted above them, and the loader
applies the same rule. A fitted launch cost above ``MAX_LAUNCH_S`` on GPU timings is refused
outright: it means times in the wrong unit, not a poor fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares, nnls

from kvsim.simulator.errors import KvsimError
from kvsim.simulator.latency.ops import OP_KINDS
from kvsim.simulator.latency.profile import (
    FORM,
    MAX_HELDOUT_ERROR,
    MAX_HELDOUT_MAPE,
    NOT_MEASURABLE_ON_ONE_GPU,
    PROFILE_VERSION,
    heldout_excess,
    predict,
)

from .measurements import Measurement, read_measurements

# Linear extra terms per op: costs the roofline does not see.
EXTRA_TERMS = {"attention": ("segments", "seqs"), "ssm_step": ("batch",)}
# A kernel launch (the fixed cost of one call) is microseconds on a GPU; a fitted one of a
# millisecond or more means the times are not in seconds (ms written as s, typically).
MAX_LAUNCH_S = 1e-3
DEVICE_KEYS = ("device", "driver", "cuda", "torch", "triton", "date", "timer")


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
    """Fit one op and measure its held-out error with k-fold cross-validation.

    ``rows`` are validated measurements (``read_measurements``): every row has every feature."""
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
    names = [n for n, v in rows[0].features.items() if not isinstance(v, str)]
    ranges = {n: [float(min(r.features[n] for r in rows)), float(max(r.features[n] for r in rows))]
              for n in names}  # fmt: skip
    return OpFitResult(params, float(errors.mean()), float(errors.max()), len(rows), ranges)


def grid_record(run: dict, rows: list[Measurement], measurements: str) -> dict:
    """The profile's ``grid`` section: whose shapes were measured, and how many points per op."""
    points: dict[str, int] = {}
    for r in rows:
        points[r.op] = points.get(r.op, 0) + 1
    return {"model": run["model"], "tensor_parallel": run["tensor_parallel"],
            "full": run["grid"] == "full", "points": points,
            "measurements": measurements}  # fmt: skip


def build_profile(
    rows: list[Measurement],
    run: dict,
    grid: dict,
    *,
    max_mape: float = MAX_HELDOUT_MAPE,
    max_error: float = MAX_HELDOUT_ERROR,
    accept_error: bool = False,
    source: str = "measurements",
) -> dict:
    """A profile document from measurements: one fit per op measured.

    Args:
        rows, run: from ``read_measurements``. grid: the ``grid`` section (``grid_record``).
        max_mape, max_error: held-out limits recorded in the profile.
        accept_error: record the ops above the limits as accepted (``quality.accepted``).
        source: names the measurements in error messages.
    Raises:
        KvsimError: a limit outside (0, 1], too few points for an op, or a fitted launch cost
            that is no GPU's.
    """
    for name, limit in (("max_mape", max_mape), ("max_error", max_error)):
        if not 0 < limit <= 1:  # NOTE: also false for NaN
            raise KvsimError(f"held-out limit {name} is {limit!r}; allowed: a fraction in (0, 1]")
    by_op: dict[str, list[Measurement]] = {}
    for r in rows:
        by_op.setdefault(r.op, []).append(r)
    ops = {}
    for kind in sorted(by_op):
        try:
            res = fit_op(kind, by_op[kind])
        except KvsimError as e:
            raise KvsimError(f"{source}: {e}") from None
        launch = res.params["launch_s"]
        if run["timer"] == "cuda_events" and launch > MAX_LAUNCH_S:
            raise KvsimError(
                f"{source}: op {kind!r}: fitted launch_s {launch:.3g} s; a kernel launch costs "
                f"microseconds (allowed ≤ {MAX_LAUNCH_S:g} s): are the times in ms instead of s?"
            )
        ops[kind] = {
            "form": FORM,
            "params": res.params,
            "ranges": res.ranges,
            "points": res.points,
            "heldout_mape": round(res.heldout_mape, 6),
            "heldout_max_error": round(res.heldout_max_error, 6),
        }
    above = [k for k, e in ops.items() if _excess(e, max_mape, max_error)]
    return {
        "kvsim_profile": PROFILE_VERSION,
        "device": {k: run[k] for k in DEVICE_KEYS},
        "grid": grid,
        "ops": ops,
        "not_measured": {
            k: (
                "host-side time of the serving engine"
                if k == "step_overhead"
                else "needs several GPUs"
            )
            for k in NOT_MEASURABLE_ON_ONE_GPU
        },  # fmt: skip
        "quality": {
            "max_heldout_mape": max_mape,
            "max_heldout_error": max_error,
            "accepted": above if accept_error else [],
        },
    }


def _excess(entry: dict, max_mape: float, max_error: float) -> str:
    return heldout_excess(entry["heldout_mape"], entry["heldout_max_error"], max_mape, max_error)


def refuse_above_limits(profile: dict, source: str, hint: str) -> None:
    """Raise a one-line error naming the first op whose held-out error exceeds the profile's
    limits and is not accepted; ``hint`` says what the user can do."""
    q = profile["quality"]
    bad = [(k, _excess(e, q["max_heldout_mape"], q["max_heldout_error"]))
           for k, e in profile["ops"].items() if k not in q["accepted"]]  # fmt: skip
    bad = [(k, why) for k, why in bad if why]
    if bad:
        more = f" (and {len(bad) - 1} more op{'s' * (len(bad) > 2)})" if len(bad) > 1 else ""
        raise KvsimError(f"{source}: op {bad[0][0]!r}: {bad[0][1]}{more}; {hint}")


def write_profile(path: str | Path, profile: dict) -> None:
    Path(path).write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")


def fit_file(
    measurements: str | Path,
    out: str | Path,
    *,
    max_mape: float = MAX_HELDOUT_MAPE,
    max_error: float = MAX_HELDOUT_ERROR,
    accept_error: bool = False,
    show=None,
) -> dict:
    """``kvsim fit``: refit a profile from a measurements CSV and write it to ``out``.

    ``show`` (if given) is called with the profile before the held-out limits are applied, so
    that a refused fit can still be inspected.

    Raises:
        KvsimError: a bad measurements file, or an op above the held-out limits without
            ``accept_error`` (then nothing is written).
    """
    rows, run = read_measurements(measurements)
    grid = grid_record(run, rows, Path(measurements).name)
    profile = build_profile(rows, run, grid, max_mape=max_mape, max_error=max_error,
                            accept_error=accept_error, source=str(measurements))  # fmt: skip
    if show is not None:
        show(profile)
    refuse_above_limits(
        profile, str(measurements), f"{out} not written: measure more points, or accept the "
        f"error explicitly with kvsim fit {measurements} --out {out} --accept-error"
    )  # fmt: skip
    write_profile(out, profile)
    return profile
