"""Kernel benchmark (GPU): time each kvsim kernel over a size sweep and compare with ceilings.

Ceilings are measured on the device first: a large device-to-device copy (bytes read + written per
second) and a large bf16 matrix product through torch (cuBLAS). Each kernel's achieved bandwidth
(bytes it must move / time) or FLOP rate is printed against them, MSA prefill against
``torch.nn.functional.scaled_dot_product_attention`` on the same contiguous KV, and MSA with
8 segments against 1 segment over the same total KV. Timings are medians of CUDA-event timings
(``triton.testing.do_bench``) after warm-up, with input sets rotated so that they exceed L2.

    python benchmarks/kernels.py --out benchmarks/results/kernels_h100.md
    python benchmarks/kernels.py --sweep          # also try MSA block configurations
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import subprocess
import sys

import torch
import triton

from kvsim.kernels.msa import default_num_splits, msa_decode, msa_prefill
from kvsim.kernels.quant import QuantizedKVCache, dequantize_kv, quantize_kv
from kvsim.kernels.scd import scd_reuse
from kvsim.kernels.ssm import ssm_scan

H, KVH, D, PAGE = 32, 8, 128, 16  # Llama-3.1-8B attention shape
BF16 = torch.bfloat16
ROWS: list[tuple[str, str, str, str, str]] = []


def bench(fns, warmup_ms=25, rep_ms=150) -> float:
    """Median seconds of one call, cycling through ``fns`` (one per rotated input set)."""
    state = {"i": 0}

    def call():
        fns[state["i"] % len(fns)]()
        state["i"] += 1

    return triton.testing.do_bench(call, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3


def copies(nbytes: int) -> int:
    """Input sets needed so that one pass over all of them exceeds twice the L2 cache."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(1, math.ceil(2 * l2 / max(nbytes, 1)))


def row(kernel, shape, time_s, achieved, note=""):
    ROWS.append((kernel, shape, f"{time_s * 1e6:,.1f}", achieved, note))
    print(f"{kernel:22} {shape:44} {time_s * 1e6:10,.1f} us  {achieved:24} {note}", flush=True)


def ceilings() -> tuple[float, float]:
    n = 1 << 30
    src = torch.randn(n // 2, dtype=BF16, device="cuda")
    dst = torch.empty_like(src)
    t_copy = bench([lambda: dst.copy_(src)])
    copy_bw = 2 * n / t_copy
    a = torch.randn(8192, 8192, dtype=BF16, device="cuda")
    b = torch.randn(8192, 8192, dtype=BF16, device="cuda")
    t_mm = bench([lambda: a @ b])
    mm = 2 * 8192**3 / t_mm
    row(
        "copy (ceiling)",
        "1 GiB device-to-device",
        t_copy,
        f"{copy_bw / 1e12:.2f} TB/s",
        "bytes read + written",
    )
    row("bf16 matmul (ceiling)", "8192^3 torch.matmul", t_mm, f"{mm / 1e12:.0f} TFLOP/s")
    return copy_bw, mm


def paged_kv(batch, ctx, n_segs, gen):
    blocks = -(-ctx // PAGE)
    nb = batch * blocks
    k = torch.randn(nb, PAGE, KVH, D, dtype=BF16, device="cuda", generator=gen)
    v = torch.randn(nb, PAGE, KVH, D, dtype=BF16, device="cuda", generator=gen)
    table = torch.randperm(nb, device="cuda", generator=gen).to(torch.int32).view(batch, blocks)
    bounds = [round(ctx * i / n_segs) for i in range(n_segs + 1)]
    segs = [(bounds[i], bounds[i + 1] - bounds[i], bounds[i]) for i in range(n_segs)]
    seg = torch.tensor([segs] * batch, dtype=torch.int32, device="cuda")
    n = torch.full((batch,), n_segs, dtype=torch.int32, device="cuda")
    return k, v, table, seg, n


def msa_decode_cases(copy_bw, gen, sweep):
    results = {}
    for batch, ctx in ((1, 32768), (8, 16384), (32, 8192), (64, 4096), (16, 131072)):
        for n_segs in (1, 8):
            kv_bytes = batch * ctx * KVH * D * 2 * 2
            sets = [paged_kv(batch, ctx, n_segs, gen) for _ in range(min(copies(kv_bytes), 4))]
            q = torch.randn(batch, H, D, dtype=BF16, device="cuda", generator=gen)
            pos = torch.full((batch,), ctx - 1, dtype=torch.int32, device="cuda")
            configs = [{}]
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            base = default_num_splits(batch, KVH, ctx, sms)
            if sweep and batch * ctx <= 8 * 32768:  # the latency-bound cases
                configs += [
                    {"block_n": bn, "num_warps": w, "num_stages": st, "num_splits": sp}
                    for bn in (64, 128)
                    for w in (4, 8)
                    for st in (2, 3)
                    for sp in sorted({base, 2 * base, 4 * base})
                ]
            best = None
            for cfg in configs:
                try:
                    t = bench(
                        [
                            lambda s=s, c=cfg: msa_decode(q, pos, *s, max_kv_len=ctx, **c)
                            for s in sets
                        ]
                    )
                except Exception as e:  # a config the compiler rejects (shared memory, ...)
                    print(f"  config {cfg} failed: {type(e).__name__}", flush=True)
                    continue
                if best is None or t < best[0]:
                    best = (t, cfg)
            t, cfg = best
            results[(batch, ctx, n_segs)] = t
            bw = kv_bytes / t
            splits = default_num_splits(
                batch, KVH, ctx, torch.cuda.get_device_properties(0).multi_processor_count
            )
            note = f"{bw / copy_bw:.0%} of copy BW; splits {splits}"
            if sweep:
                note += f"; best {cfg or 'default'}"
            row(
                "msa_decode", f"B={batch} ctx={ctx} segs={n_segs}", t, f"{bw / 1e12:.2f} TB/s", note
            )
    for batch, ctx in {(b, c) for b, c, _ in results}:
        one, eight = results[(batch, ctx, 1)], results[(batch, ctx, 8)]
        print(f"  decode B={batch} ctx={ctx}: 8 segments {eight / one - 1:+.1%} vs 1", flush=True)


def msa_prefill_cases(mm, gen, sweep):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    chosen: dict = {}
    for n_tok in (8192, 4096, 16384):  # a sweep (if asked) runs at 8192 and its winner is kept
        flops = 4 * H * D * n_tok * n_tok / 2  # causal
        q = torch.randn(n_tok, H, D, dtype=BF16, device="cuda", generator=gen)
        cu = torch.tensor([0, n_tok], dtype=torch.int32, device="cuda")
        pos = torch.arange(n_tok, dtype=torch.int32, device="cuda")
        # SDPA on the same KV made contiguous (flash backend; GQA handled by SDPA).
        k, v, table, _, n1 = paged_kv(1, n_tok, 1, gen)
        order = table[0].long()
        kc = k[order].reshape(1, -1, KVH, D)[:, :n_tok].transpose(1, 2).contiguous()
        vc = v[order].reshape(1, -1, KVH, D)[:, :n_tok].transpose(1, 2).contiguous()
        qs = q.view(1, n_tok, H, D).transpose(1, 2)
        t_sdpa = bench([lambda: sdpa(qs, kc, vc, is_causal=True, enable_gqa=True)])
        row("sdpa (reference)", f"causal N={n_tok}", t_sdpa, f"{flops / t_sdpa / 1e12:.0f} TFLOP/s")
        configs = [chosen]
        if sweep and not chosen:
            configs += [
                {"block_m": bm, "block_n": bn, "num_warps": w, "num_stages": st}
                for bm in (64, 128)
                for bn in (64, 128)
                for w in (4, 8)
                for st in (2, 3)
            ]
        times = {}
        for n_segs in (1, 8):
            bounds = [round(n_tok * i / n_segs) for i in range(n_segs + 1)]
            segs = [(bounds[i], bounds[i + 1] - bounds[i], bounds[i]) for i in range(n_segs)]
            seg = torch.tensor([segs], dtype=torch.int32, device="cuda")
            n = torch.tensor([n_segs], dtype=torch.int32, device="cuda")
            best = None
            for cfg in configs if n_segs == 1 else [chosen]:
                try:
                    t = bench(
                        [
                            lambda c=cfg: msa_prefill(
                                q, cu, pos, k, v, table, seg, n, max_q_len=n_tok, **c
                            )
                        ]
                    )
                except Exception as e:  # a configuration the compiler rejects
                    print(f"  config {cfg} failed: {type(e).__name__}", flush=True)
                    continue
                if best is None or t < best[0]:
                    best = (t, cfg)
            t, cfg = best
            chosen = chosen or cfg
            times[n_segs] = t
            note = f"{t_sdpa / t:.0%} of SDPA"
            if n_segs == 8:
                note += f"; {t / times[1] - 1:+.1%} vs 1 segment"
            if sweep and n_segs == 1:
                note += f"; config {chosen or 'default'}"
            row(
                "msa_prefill",
                f"causal N={n_tok} segs={n_segs}",
                t,
                f"{flops / t / 1e12:.0f} TFLOP/s",
                note,
            )


def other_kernels(copy_bw, mm, gen):
    # SCD reuse: codes × decoder → K and V with RoPE, paged write (Llama-3.1-8B layer, r=128).
    for t_tok, r in ((4096, 128), (16384, 256)):
        codes = torch.randn(t_tok, r, dtype=BF16, device="cuda", generator=gen)
        dec = torch.randn(r, KVH * D, dtype=BF16, device="cuda", generator=gen) / r**0.5
        pos = torch.arange(t_tok, dtype=torch.int32, device="cuda")
        slots = torch.randperm(t_tok, device="cuda", generator=gen).to(torch.int32)
        kc = torch.empty(t_tok // PAGE, PAGE, KVH, D, dtype=BF16, device="cuda")
        vc = torch.empty_like(kc)
        t = bench([lambda: scd_reuse(codes, codes, dec, dec, pos, slots, kc, vc)])
        nbytes = 2 * (t_tok * r + r * KVH * D + t_tok * KVH * D) * 2
        fl = 2 * 2 * t_tok * r * KVH * D
        row(
            "scd_reuse",
            f"T={t_tok} r={r} (K and V)",
            t,
            f"{nbytes / t / 1e12:.2f} TB/s",
            f"{fl / t / 1e12:.0f} TFLOP/s",
        )
    # KV quantization: 64k tokens of one layer.
    t_tok = 65536
    k = torch.randn(t_tok, KVH, D, dtype=BF16, device="cuda", generator=gen)
    v = torch.randn_like(k)
    ids = torch.arange(t_tok // PAGE, dtype=torch.int32, device="cuda")
    for bits in (8, 4, 2):
        cache = QuantizedKVCache.empty(t_tok // PAGE, PAGE, KVH, D, bits, 32, device="cuda")
        t = bench([lambda c=cache: quantize_kv(k, v, ids, c)])
        nbytes = 2 * t_tok * KVH * D * (2 + bits / 8)
        row(
            "kv_quant",
            f"T={t_tok} bits={bits}",
            t,
            f"{nbytes / t / 1e12:.2f} TB/s",
            f"{nbytes / t / copy_bw:.0%} of copy BW",
        )
        t = bench([lambda c=cache: dequantize_kv(c, ids, BF16)])
        row(
            "kv_dequant",
            f"T={t_tok} bits={bits}",
            t,
            f"{nbytes / t / 1e12:.2f} TB/s",
            f"{nbytes / t / copy_bw:.0%} of copy BW",
        )
    # SSM scan: Mamba-2-like layer (64 heads × 64, state 128).
    for t_tok in (4096, 16384):
        heads, p, n = 64, 64, 128
        x = torch.randn(1, t_tok, heads, p, dtype=BF16, device="cuda", generator=gen)
        la = -torch.rand(1, t_tok, heads, device="cuda", generator=gen) * 0.1
        b = torch.randn(1, t_tok, n, dtype=BF16, device="cuda", generator=gen)
        c = torch.randn(1, t_tok, n, dtype=BF16, device="cuda", generator=gen)
        t = bench([lambda: ssm_scan(x, la, b, c, chunk=64)])
        fl = t_tok * heads * (2 * 64 * n + 2 * 64 * p + 2 * n * p * 2)
        row("ssm_scan", f"T={t_tok} H={heads} P={p} N={n}", t, f"{fl / t / 1e12:.1f} TFLOP/s")


def header() -> str:
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        smi = "unknown"
    return (
        f"device: {torch.cuda.get_device_name(0)} | nvidia-smi: {smi.strip()} | CUDA (torch): "
        f"{torch.version.cuda} | torch {torch.__version__} | triton {triton.__version__} | "
        f"python {platform.python_version()} | "
        f"date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='minutes')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the table as markdown to this file")
    ap.add_argument("--sweep", action="store_true", help="try MSA block configurations")
    ap.add_argument("--only", choices=["decode", "prefill", "other"], action="append")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU")
    head = header()
    print(head, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    copy_bw, mm = ceilings()
    only = set(args.only or ["decode", "prefill", "other"])
    if "decode" in only:
        msa_decode_cases(copy_bw, gen, args.sweep)
    if "prefill" in only:
        msa_prefill_cases(mm, gen, args.sweep)
    if "other" in only:
        other_kernels(copy_bw, mm, gen)
    table = ["| kernel | shape | median µs | achieved | note |", "|---|---|---:|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in ROWS]
    text = f"# kvsim kernel benchmark\n\n{head}\n\n" + "\n".join(table) + "\n"
    print()
    print("\n".join(table))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
