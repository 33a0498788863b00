"""The ``profile`` latency model: op prices from functions fitted to measurements of real kernels.

Every op is fitted with one form grounded in the roofline (DESIGN §7):

    t = launch_s + max(s_per_flop · flops, s_per_byte · bytes) + Σ_k coef_k · feature_k

with all parameters ≥ 0: a fixed launch cost, the slower of the compute and memory terms (the
op's FLOP and byte counts come from ``ops.py``, the same vocabulary the simulator prices), and
linear extra terms for costs the roofline does not see (segments, sequences, batch). A profile is a
YAML file written by ``kvsim calibrate`` / ``kvsim fit``: device and software versions, per-op
parameters, held-out error and the feature ranges that were measured. Pricing outside those ranges
is counted per op so that results can say they extrapolate.

Ops that one GPU cannot measure (``step_overhead``: host-side time of the serving engine;
``allreduce``: needs several GPUs) are listed by the profile under ``not_measured`` and priced by
the roofline model; any other op the scenario needs and the profile lacks is an error unless the
scenario asks for ``fallback: roofline``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import KvsimError, read_yaml_mapping
from .ops import OP_KINDS, Attention, Op, attention_kv_linear

PROFILE_VERSION = 1
NOT_MEASURABLE_ON_ONE_GPU = ("step_overhead", "allreduce")


def predict(params: dict, flops, nbytes, extras: dict):
    """The fitted form; works on floats and on numpy arrays (elementwise)."""
    compute = params["s_per_flop"] * flops
    memory = params["s_per_byte"] * nbytes
    t = np.maximum(compute, memory) + params["launch_s"]
    for name, coef in params.get("extra", {}).items():
        t = t + coef * extras[name]
    return t


class OpFit:
    """One op's fitted parameters and the feature ranges they were fitted on."""

    __slots__ = ("kind", "params", "launch", "per_flop", "per_byte", "extra", "ranges", "outside")

    def __init__(self, kind: str, entry: dict, where: str):
        try:
            p = entry["params"]
            self.launch = float(p["launch_s"])
            self.per_flop = float(p["s_per_flop"])
            self.per_byte = float(p["s_per_byte"])
            self.extra = {k: float(v) for k, v in (p.get("extra") or {}).items()}
            self.ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in entry["ranges"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise KvsimError(f"{where}: ops.{kind}: malformed entry ({e})") from None
        if min(self.launch, self.per_flop, self.per_byte, *self.extra.values(), 0.0) < 0:
            raise KvsimError(f"{where}: ops.{kind}: parameters must be non-negative")
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
        self.where = where
        self.device = profile.get("device", {})
        self.fits = {k: OpFit(k, v, where) for k, v in (profile.get("ops") or {}).items()}
        unknown = sorted(set(self.fits) - set(OP_KINDS))
        if unknown:
            raise KvsimError(f"{where}: ops: unknown op {unknown[0]!r}; known: {sorted(OP_KINDS)}")
        self.not_measured = dict(profile.get("not_measured") or {})
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
