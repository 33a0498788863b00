"""GPU entries, checked field by field: the shipped catalog (``hardware.yaml``) and a user's own
hardware file (``--hardware-file``) go through the same checks.

A user's file is a YAML mapping of GPU names to entries with the catalog's fields. An entry may
name ``base:``, a catalog GPU whose figures it starts from (``my-h100: {base: h100-sxm,
memory_gib: 94, source: …}``); otherwise it starts from the catalog's ``defaults`` (launch and
engine overheads, NCCL's constants, non-torch memory) and must give every other figure. Every
entry says where its figures come from (``source``). A name the catalog has already is refused:
kvsim's figures are not silently replaced.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import fields
from pathlib import Path

from ..errors import KvsimError, echo, read_yaml_mapping

_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")
# field: (low, high, low allowed?) — a number's bounds; lists are nccl_* latencies (3 numbers)
_BOUNDS = {
    "memory_gib": (0, 1e5, False),
    "bf16_tflops": (0, 1e6, False),
    "hbm_tbyte_per_s": (0, 1e4, False),
    "nvlink_gbit_per_s": (0, 1e7, True),
    "pcie_gbit_per_s": (0, 1e7, False),
    "bandwidth_efficiency": (0, 1, False),
    "gemm_efficiency": (0, 1, False),
    "gemm_tile_exponent": (0, 1, False),
    "gemm_tile_s": (0, 1, True),
    "gemm_launch_s": (0, 1, True),
    "attention_prefill_efficiency": (0, 1, False),
    "attention_decode_efficiency": (0, 1, False),
    "attention_decode_streams": (0, 1e6, False),
    "allreduce_bus_gbyte_per_s": (0, 1e6, False),
    "nccl_ll_max_gbyte_per_s": (0, 1e6, False),
    "launch_s": (0, 1, True),
    "step_overhead_s": (0, 1, True),
    "step_overhead_per_seq_s": (0, 1, True),
    "nontorch_gib": (0, 1e4, True),
    "nontorch_tp_gib": (0, 1e4, True),
}
_LISTS = ("nccl_ring_base_latency_us", "nccl_ring_hop_latency_us")


def _number(value, where: str, key: str, low: float, high: float, low_ok: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_ok else value > low) and value <= high
    if not ok:
        span = f"{'[' if low_ok else '('}{low:g}, {high:g}]"
        raise KvsimError(f"{where}: {key}: {echo(value, 80)} is not allowed: a number in {span}")
    return float(value)


def gpu_from_entry(name: str, entry: dict, where: str, spec_type):
    """A ``spec_type`` (``GpuSpec``) from a complete entry; one-line errors naming ``where`` and
    the field."""
    known = {f.name for f in fields(spec_type)} - {"name"}
    for key in entry:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            allowed = ", ".join(sorted(known))
            more = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {allowed}"
            raise KvsimError(f"{where}: unknown field {echo(key, 80)}{more}")
    missing = [k for k in sorted(known) if k not in entry]
    if missing:
        raise KvsimError(f"{where}: lacks {', '.join(missing)}")
    values: dict = {}
    for key in known:
        v = entry[key]
        if key == "source":
            if not isinstance(v, str) or not v.strip():
                raise KvsimError(f"{where}: source: where the figures come from (a URL, a "
                                 "measurement), as text")  # fmt: skip
            values[key] = v
        elif key == "sms":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
                raise KvsimError(f"{where}: sms: {echo(v, 80)} is not allowed: an integer in "
                                 "[1, 100000]")  # fmt: skip
            values[key] = v
        elif key in _LISTS:
            if not isinstance(v, list) or len(v) != 3:
                raise KvsimError(f"{where}: {key}: {echo(v, 80)} is not allowed: three numbers "
                                 "(NCCL's LL, LL128, Simple protocols), microseconds")  # fmt: skip
            values[key] = tuple(_number(x, where, key, 0, 1e6, True) for x in v)
        else:
            values[key] = _number(v, where, key, *_BOUNDS[key])
    return spec_type(name=name, **values)


def read_hardware_file(path: str | Path, catalog: dict, spec_type) -> dict:
    """The GPUs of a user's hardware file, by name (lower case), each checked as the catalog's
    are. ``catalog``: the shipped entries (with ``defaults``)."""
    path = Path(path)
    doc = read_yaml_mapping(path, "hardware file", " of GPU names to their figures")
    out = {}
    for raw_name, entry in doc.items():
        name = str(raw_name).lower()
        where = f"{path}: {echo(raw_name, 80)}"
        if not _NAME.fullmatch(name):
            raise KvsimError(f"{where}: a GPU name is letters, digits and ._+- (at most 64)")
        if name in catalog or name == "defaults":
            raise KvsimError(f"{where}: the catalog has a GPU of that name; give yours another "
                             f"(and base: {name} to start from its figures)")  # fmt: skip
        if not isinstance(entry, dict):
            raise KvsimError(f"{where}: an entry is a mapping of the catalog's fields")
        entry = dict(entry)
        if "source" not in entry:  # its own, even over a base: some figures are the user's
            raise KvsimError(f"{where}: source: where the figures come from (a URL, a "
                             "measurement), as text")  # fmt: skip
        base = entry.pop("base", None)
        if base is not None:
            if not isinstance(base, str) or base.lower() not in catalog or base == "defaults":
                allowed = ", ".join(k for k in catalog if k != "defaults")
                raise KvsimError(f"{where}: base: {echo(base, 80)} is not allowed; allowed: a "
                                 f"catalog GPU ({allowed})")  # fmt: skip
            start = dict(catalog[base.lower()])
        else:
            start = dict(catalog.get("defaults", {}))
        out[name] = gpu_from_entry(name, {**start, **entry}, where, spec_type)
    if not out:
        raise KvsimError(f"{path}: a hardware file names at least one GPU")
    return out
