"""The roofline latency model against every measurement this project holds.

For each measured point — the H100 kernel benchmark (``benchmarks/results/kernels_h100.md``) and
the raw CSV of every calibration profile (``calibration/profiles/*/measurements.csv``) — print the
roofline's price beside the measured time, then the median and worst relative error per op. A
measurement is a GPU timing with its device recorded; the roofline is priced for that device.

    python benchmarks/roofline_check.py
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from kvsim.simulator.catalog import get_gpu
from kvsim.simulator.latency import RooflineModel
from kvsim.simulator.latency.ops import (
    OP_KINDS,
    Attention,
    Copy,
    Gemm,
    KvDequant,
    KvQuant,
    ScdReuse,
    SsmScan,
)

ROOT = Path(__file__).resolve().parents[1]
H, KVH, D = 32, 8, 128  # the kernel benchmark's Llama-3.1-8B attention shape


def _attention(q, kv, pairs, seqs, segments) -> Attention:
    return Attention(2, q, kv, pairs, seqs, segments, H, KVH, D, 2 * KVH * D)


def kernel_table_op(kernel: str, shape: str):
    """The op a row of the kernel benchmark measured, or None if it is not one op."""
    v = {k: int(x) for k, x in re.findall(r"(\w+)=(\d+)", shape)}
    if kernel.startswith("copy"):
        return Copy(2, 1 << 30, "d2d")
    if kernel.startswith("bf16 matmul"):
        n = int(shape.split("^")[0])
        return Gemm(2, n, n, n)
    if kernel == "msa_decode":
        b, c = v["B"], v["ctx"]
        return _attention(b, b * c, b * c, b, b * v["segs"])
    if kernel.startswith("sdpa") or kernel == "msa_prefill":
        n = v["N"]
        return _attention(n, n, n * (n + 1) // 2, 1, v.get("segs", 1))
    if kernel == "scd_reuse":
        return ScdReuse(2, v["T"], v["r"], 2 * KVH * D)
    if kernel in ("kv_quant", "kv_dequant"):
        cls = KvQuant if kernel == "kv_quant" else KvDequant
        return cls(2, v["T"], 2 * KVH * D, v["bits"])
    if kernel == "ssm_scan":
        return SsmScan(2, v["T"], v["H"], v["P"], v["N"])
    return None


def _device_gpu(text: str) -> str:
    t = text.lower()
    for key, name in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100-80g"), ("h20", "h20")):
        if key in t:
            return name
    raise SystemExit(f"no catalog GPU for device {text!r}")


def kernel_points(path: Path):
    """(source, op, measured seconds, gpu) of every row of a kernel benchmark table."""
    text = path.read_text(encoding="utf-8")
    device = re.search(r"device: ([^|]+)", text)
    gpu = _device_gpu(device.group(1) if device else "")
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"[\d,]+\.\d+", cells[2]):
            continue
        op = kernel_table_op(cells[0], cells[1])
        if op is not None:
            yield (
                f"{path.name}: {cells[0]} {cells[1]}",
                op,
                float(cells[2].replace(",", "")) / 1e6,
                gpu,
            )


def profile_points(path: Path):
    """(source, op, measured seconds, gpu) of every row of a calibration measurements CSV."""
    import csv
    import json

    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["op"] not in OP_KINDS:
                continue
            op = OP_KINDS[row["op"]](**json.loads(row["features"]))
            yield (
                f"{path.parent.name}: {row['op']}",
                op,
                float(row["seconds"]),
                _device_gpu(row["device"]),
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="print every point, not only the summary")
    args = ap.parse_args()
    points = list(kernel_points(ROOT / "benchmarks" / "results" / "kernels_h100.md"))
    for csv_path in sorted((ROOT / "calibration" / "profiles").glob("*/measurements.csv")):
        points += list(profile_points(csv_path))
    models: dict[str, RooflineModel] = {}
    errors: dict[str, list[float]] = {}
    print(f"{'point':58}{'measured µs':>13}{'roofline µs':>13}{'error':>9}")
    for source, op, measured, gpu in points:
        model = models.setdefault(gpu, RooflineModel(get_gpu(gpu)))
        priced = model.price(op)
        err = priced / measured - 1
        errors.setdefault(op.kind, []).append(err)
        if args.all or len(points) <= 60:
            print(f"{source[:57]:58}{measured * 1e6:>13,.1f}{priced * 1e6:>13,.1f}{err:>+9.1%}")
    print(
        f"\n{'op':14}{'points':>8}{'median |error|':>16}{'worst |error|':>15}{'median error':>14}"
    )
    for kind, errs in sorted(errors.items()):
        absolute = [abs(e) for e in errs]
        print(
            f"{kind:14}{len(errs):>8}{statistics.median(absolute):>16.1%}{max(absolute):>15.1%}"
            f"{statistics.median(errs):>+14.1%}"
        )
    print("\nerror = roofline / measured − 1 (negative: the roofline is optimistic)")


if __name__ == "__main__":
    main()
