"""The ``profile`` latency model: op prices from functions fitted to measurements of real kernels.

Every op is fitted with one form grounded in the roofline (DESIGN §7):

    t = launch_s + max(s_per_flop · flops, s_per_byte · bytes) + Σ_k coef_k · feature_k

with all parameters ≥ 0: a fixed launch cost, the slower of the compute and memory terms (the
op's FLOP and byte counts come from ``ops.py``, the same vocabulary the simulator prices), and
linear extra terms for costs the roofline does not see (segments, sequences, batch). A profile is a
YAML file written by ``kvsim calibrate`` / ``kvsim fit``: device and software versions, per-op
parameters, held-out error and the feature ranges that were measured. Pricing outside those ranges
is counted per op so that results can say they extrapolate.

Loading checks every field (one-line errors naming it) and the held-out errors: an op whose
held-out MAPE or worst error exceeds the limits the profile records under ``quality`` (by default
``MAX_HELDOUT_MAPE`` and ``MAX_HELDOUT_ERROR``) is refused unless ``quality.accepted`` lists it —
``kvsim fit --accept-error`` writes that acceptance, and nothing else does.

Ops that one GPU cannot measure (``step_overhead``: host-side time of the serving engine;
``allreduce``: needs several GPUs) are listed by the profile under ``not_measured`` and priced by
the roofline model; any other op the scenario needs and the profile lacks is an error unless the
scenario asks for ``fallback: roofline``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import KvsimError, read_yaml_mapping
from ..profile_limits import MAX_HELDOUT_ERROR, MAX_HELDOUT_MAPE
from .ops import OP_KINDS, Attention, Op, attention_kv_linear

PROFILE_VERSION = 1
NOT_MEASURABLE_ON_ONE_GPU = ("step_overhead", "allreduce")
FORM = "launch_s + max(s_per_flop * flops, s_per_byte * bytes) + sum(extra * feature)"
TOP_KEYS = ("kvsim_profile", "device", "grid", "ops", "not_measured", "quality")
OP_ENTRY_KEYS = ("form", "params", "ranges", "points", "heldout_mape", "heldout_max_error")
HELDOUT_KEYS = ("heldout_mape", "heldout_max_error")
PARAM_KEYS = ("launch_s", "s_per_flop", "s_per_byte", "extra")
QUALITY_KEYS = ("max_heldout_mape", "max_heldout_error", "accepted")


def heldout_excess(mape: float, worst: float, max_mape: float, max_error: float) -> str:
    """Why an op's held-out error is above the limits ("" when it is not)."""
    parts = []
    if mape > max_mape:
        parts.append(f"held-out MAPE {mape:.1%} exceeds {max_mape:.1%}")
    if worst > max_error:
        parts.append(f"worst held-out error {worst:.1%} exceeds {max_error:.1%}")
    return " and ".join(parts)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v, where: str) -> float:
    """A finite number ≥ 0 (YAML 1.1 reads ``5e-6`` without a dot as a string: accepted)."""
    try:
        x = float(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else -1.0
    except ValueError:
        x = -1.0
    if not (math.isfinite(x) and x >= 0):
        raise KvsimError(f"{where} is {v!r}; allowed: a finite number ≥ 0")
    return x


def _keys(doc, where: str, allowed, required=(), what: str = "key") -> dict:
    """``doc`` as a mapping whose keys are ``allowed`` (any when None) and include ``required``."""
    if not isinstance(doc, dict):
        raise KvsimError(f"{where} is {doc!r}; allowed: a mapping")
    if allowed is not None:
        for k in doc:
            if k not in allowed:
                raise KvsimError(f"{where}: unknown {what} {k!r}; allowed: {', '.join(allowed)}")
    for k in required:
        if k not in doc:
            raise KvsimError(f"{where}: lacks {k!r} (needs {', '.join(required)})")
    return doc


def _limit(quality: dict, key: str, default: float, where: str) -> float:
    v = quality.get(key, default)
    x = _number(v, f"{where}: quality.{key}")
    if not 0 < x <= 1:
        raise KvsimError(f"{where}: quality.{key} is {v!r}; allowed: a fraction in (0, 1]")
    return x


def predict(params: dict, flops, nbytes, extras: dict):
    """The fitted form; works on floats and on numpy arrays (elementwise)."""
    compute = params["s_per_flop"] * flops
    memory = params["s_per_byte"] * nbytes
    t = np.maximum(compute, memory) + params["launch_s"]
    for name, coef in params.get("extra", {}).items():
        t = t + coef * extras[name]
    return t


class OpFit:
    """One op's fitted parameters, held-out error and the feature ranges they were fitted on."""

    __slots__ = ("kind", "params", "launch", "per_flop", "per_byte", "extra", "ranges", "outside",
                 "heldout_mape", "heldout_max_error")  # fmt: skip

    def __init__(self, kind: str, entry, where: str):
        here = f"{where}: ops.{kind}"
        _keys(entry, here, OP_ENTRY_KEYS, required=("params", "ranges", *HELDOUT_KEYS))
        if "form" in entry and entry["form"] != FORM:
            raise KvsimError(f"{here}.form is {entry['form']!r}; allowed: {FORM!r}")
        if "points" in entry and not (_is_int(entry["points"]) and entry["points"] >= 1):
            raise KvsimError(f"{here}.points is {entry['points']!r}; allowed: an integer ≥ 1")
        p = entry["params"]
        _keys(p, f"{here}.params", PARAM_KEYS, required=PARAM_KEYS[:3])
        self.launch = _number(p["launch_s"], f"{here}.params.launch_s")
        self.per_flop = _number(p["s_per_flop"], f"{here}.params.s_per_flop")
        self.per_byte = _number(p["s_per_byte"], f"{here}.params.s_per_byte")
        features = sorted(OP_KINDS[kind]().features())
        extra = p.get("extra") or {}
        _keys(extra, f"{here}.params.extra", features)
        self.extra = {k: _number(v, f"{here}.params.extra.{k}") for k, v in extra.items()}
        _keys(entry["ranges"], f"{here}.ranges", features)
        self.ranges = {}
        for name, span in entry["ranges"].items():
            at = f"{here}.ranges.{name}"
            if not (isinstance(span, list) and len(span) == 2):
                raise KvsimError(f"{at} is {span!r}; allowed: [low, high]")
            lo, hi = _number(span[0], at), _number(span[1], at)
            if lo > hi:
                raise KvsimError(f"{at} is {span!r}; allowed: [low, high] with low ≤ high")
            self.ranges[name] = (lo, hi)
        self.heldout_mape = _number(entry["heldout_mape"], f"{here}.heldout_mape")
        self.heldout_max_error = _number(entry["heldout_max_error"], f"{here}.heldout_max_error")
        self.kind = kind
        self.params = {"launch_s": self.launch, "s_per_flop": self.per_flop,
                       "s_per_byte": self.per_byte, "extra": self.extra}  # fmt: skip
        self.outside = 0

    def price(self, op: Op) -> float:
        compute = self.per_flop * op.flops()
        memory = self.per_byte * op.bytes()
        t = (compute if compute > memory else memory) + self.launch
        if self.extra:
            f = op.features()
            for name, coef in self.extra.items():
                t += coef * f[name]
        return t

    def check_range(self, op: Op) -> None:
        f = op.features()
        for name, (lo, hi) in self.ranges.items():
            x = f.get(name)
            if x is not None and np.any((np.asarray(x) < lo) | (np.asarray(x) > hi)):
                self.outside += 1
                return


class ProfileModel:
    """Prices ops with a calibration profile's fitted functions."""

    name = "profile"

    def __init__(self, profile: dict, where: str, roofline, allow_fallback: bool, required):
        if profile.get("kvsim_profile") != PROFILE_VERSION:
            raise KvsimError(
                f"{where}: not a kvsim profile of version {PROFILE_VERSION} "
                f"(kvsim_profile: {profile.get('kvsim_profile')!r})"
            )
        _keys(profile, where, TOP_KEYS)
        self.where = where
        self.device = _keys(profile.get("device") or {}, f"{where}: device", None)
        _keys(profile.get("grid") or {}, f"{where}: grid", None)
        ops = _keys(profile.get("ops") or {}, f"{where}: ops", sorted(OP_KINDS), what="op")
        self.fits = {k: OpFit(k, v, where) for k, v in ops.items()}
        quality = profile.get("quality") or {}
        _keys(quality, f"{where}: quality", QUALITY_KEYS)
        max_mape = _limit(quality, "max_heldout_mape", MAX_HELDOUT_MAPE, where)
        max_error = _limit(quality, "max_heldout_error", MAX_HELDOUT_ERROR, where)
        accepted = quality.get("accepted") or []
        if not isinstance(accepted, list) or any(
            not isinstance(k, str) or k not in self.fits for k in accepted
        ):
            raise KvsimError(
                f"{where}: quality.accepted is {accepted!r}; allowed: a list of the profile's ops "
                f"({', '.join(sorted(self.fits))})"
            )
        self.accepted = sorted(accepted)
        for kind, fit in self.fits.items():
            why = heldout_excess(fit.heldout_mape, fit.heldout_max_error, max_mape, max_error)
            if why and kind not in accepted:
                raise KvsimError(
                    f"{where}: ops.{kind}: {why}; refit it, or accept it explicitly (kvsim fit "
                    "--accept-error lists it under quality.accepted)"
                )
        not_measured = profile.get("not_measured") or {}
        _keys(not_measured, f"{where}: not_measured", NOT_MEASURABLE_ON_ONE_GPU)
        self.not_measured = dict(not_measured)
        missing = [k for k in required if k not in self.fits and k not in self.not_measured]
        if missing and not allow_fallback:
            raise KvsimError(
                f"{where}: the profile lacks op {missing[0]!r} (has {sorted(self.fits)}); measure "
                "it, or set latency.fallback: roofline in the scenario"
            )
        self.fallback = roofline
        self.fallback_ops = sorted(set(missing) | (set(required) & set(self.not_measured)))
        # NOTE: one dict lookup by op kind on the hot path.
        self._price = {k: f.price for k, f in self.fits.items()}

    def describe(self) -> str:
        """What priced a run: the profile, its device and the date it was measured."""
        device = self.device.get("device") or "unknown device"
        date = self.device.get("date") or "undated"
        return f"profile {self.where} ({device}, {date})"

    def price(self, op: Op) -> float:
        """Seconds one op takes, from the fitted function (or the fallback for unmeasured ops)."""
        f = self._price.get(op.kind)
        if f is None:
            return self.fallback.price(op)
        return f(op)

    def decode_attention_terms(self, op: Attention) -> tuple[float, float, float, float] | None:
        """(cf, mb, mc, const) with price = max(cf·x, mb·x + mc) + const for attention ops like
        ``op`` whose kv_tokens = qk_pairs = x (pure decode); None if an extra term varies with x."""
        fit = self.fits.get("attention")
        if fit is None:
            return self.fallback.decode_attention_terms(op)
        a, b, c = attention_kv_linear(op)
        const = fit.launch
        features = op.features()
        for name, coef in fit.extra.items():
            if name in ("kv_tokens", "qk_pairs"):
                return None
            const += coef * features[name]
        return fit.per_flop * a, fit.per_byte * b, fit.per_byte * c, const

    def check_range(self, op: Op) -> None:
        fit = self.fits.get(op.kind)
        if fit is not None:
            fit.check_range(op)

    def extrapolated(self) -> dict[str, int]:
        """Priced ops with a feature outside the measured range, by op kind."""
        return {k: f.outside for k, f in sorted(self.fits.items()) if f.outside}


def load_profile(path: str | Path, roofline, allow_fallback: bool, required) -> ProfileModel:
    """Read a profile YAML.

    Ops in ``required`` that it lacks are an error unless ``allow_fallback``; those, and the ops
    it declares not measurable, are priced by ``roofline``."""
    path = Path(path)
    doc = read_yaml_mapping(path, "calibration profile")
    return ProfileModel(doc, str(path), roofline, allow_fallback, required)
