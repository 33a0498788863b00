"""Time the real kernels over a grid and write a calibration profile (``kvsim calibrate``).

Each op's runner builds random inputs (never zeros) for one grid point and returns a callable
that runs the real kernel: cuBLAS GEMMs through ``torch.matmul``, the Triton MSA, SCD,
quantization and SSM kernels, device copies. On a GPU a point is timed with CUDA events by
``triton.testing.do_bench`` (warm-up, then the median of repeats), cycling through enough input
sets to exceed twice the L2 cache. Under ``TRITON_INTERPRET=1`` on a CPU the same pipeline runs
(timed with a wall clock: the numbers mean nothing, the pipeline is real) — that is how the tests
exercise it.
"""

from __future__ import annotations

import datetime
import math
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kvsim.kernels.msa import interpreting
from kvsim.simulator.catalog import ModelSpec
from kvsim.simulator.errors import KvsimError

from .fit import fit_file
from .grids import grid
from .measurements import Measurement, write_measurements

PAGE = 16


def _setup():
    dev = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    return dev, dtype


def _rand(*shape, dtype, dev, gen):
    return torch.randn(*shape, generator=gen, device=dev).to(dtype)


def _paged(seq_lens, kvh, d, dtype, dev, gen):
    blocks = [-(-n // PAGE) for n in seq_lens]
    nb = sum(blocks)
    k = _rand(nb, PAGE, kvh, d, dtype=dtype, dev=dev, gen=gen)
    v = _rand(nb, PAGE, kvh, d, dtype=dtype, dev=dev, gen=gen)
    perm = torch.randperm(nb, generator=gen, device=dev).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=dev)
    at = 0
    for i, n in enumerate(blocks):
        table[i, :n] = perm[at : at + n]
        at += n
    return k, v, table


def _segments(length: int, pieces: int, start_pos: int = 0) -> list[tuple[int, int, int]]:
    bounds = [round(length * i / pieces) for i in range(pieces + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i], start_pos + bounds[i]) for i in range(pieces)]


def runner(op: str, f: dict, gen) -> Callable[[], object]:
    """A callable that runs the real kernel of ``op`` at features ``f`` on fresh random inputs."""
    from kvsim.kernels import msa, quant, scd, ssm

    dev, dt = _setup()
    if op == "gemm":
        a = _rand(f["tokens"], f["in_dim"], dtype=dt, dev=dev, gen=gen)
        b = _rand(f["in_dim"], f["out_dim"], dtype=dt, dev=dev, gen=gen)
        return lambda: torch.matmul(a, b)
    if op == "attention":
        heads, kvh, d = f["heads"], f["kv_heads"], f["head_dim"]
        seqs, q_tok = f["seqs"], f["q_tokens"]
        segs_per = max(1, f["segments"] // seqs)
        if q_tok == seqs:  # decode: one query per sequence
            ctx = f["kv_tokens"] // seqs
            k, v, table = _paged([ctx] * seqs, kvh, d, dt, dev, gen)
            seg = torch.tensor([_segments(ctx, segs_per)] * seqs, dtype=torch.int32, device=dev)
            n = torch.full((seqs,), segs_per, dtype=torch.int32, device=dev)
            q = _rand(seqs, heads, d, dtype=dt, dev=dev, gen=gen)
            pos = torch.full((seqs,), ctx - 1, dtype=torch.int32, device=dev)
            return lambda: msa.msa_decode(q, pos, k, v, table, seg, n, max_kv_len=ctx)
        total = f["kv_tokens"]
        cached = total - q_tok
        k, v, table = _paged([total], kvh, d, dt, dev, gen)
        if segs_per > 1 and cached:  # cached prefix in segments, then the new tokens
            pieces = _segments(cached, segs_per - 1) + [(cached, q_tok, cached)]
        else:
            pieces = [(0, total, 0)]
        seg = torch.tensor([pieces], dtype=torch.int32, device=dev)
        n = torch.tensor([len(pieces)], dtype=torch.int32, device=dev)
        q = _rand(q_tok, heads, d, dtype=dt, dev=dev, gen=gen)
        cu = torch.tensor([0, q_tok], dtype=torch.int32, device=dev)
        pos = torch.arange(cached, total, dtype=torch.int32, device=dev)
        return lambda: msa.msa_prefill(q, cu, pos, k, v, table, seg, n, max_q_len=q_tok)
    if op == "ssm_scan":
        t, h, p, s = f["tokens"], f["heads"], f["head_dim"], f["state_dim"]
        x = _rand(1, t, h, p, dtype=dt, dev=dev, gen=gen)
        la = -torch.rand(1, t, h, generator=gen, device=dev) * 0.1
        b, c = (_rand(1, t, s, dtype=dt, dev=dev, gen=gen) for _ in range(2))
        return lambda: ssm.ssm_scan(x, la, b, c, chunk=64 if dev == "cuda" else 16)
    if op == "ssm_step":
        bsz, h, p, s = f["batch"], f["heads"], f["head_dim"], f["state_dim"]
        x = _rand(bsz, h, p, dtype=dt, dev=dev, gen=gen)
        la = -torch.rand(bsz, h, generator=gen, device=dev) * 0.1
        b, c = (_rand(bsz, s, dtype=dt, dev=dev, gen=gen) for _ in range(2))
        state = torch.randn(bsz, h, p, s, generator=gen, device=dev)
        return lambda: ssm.ssm_step(x, la, b, c, state)
    d = 128 if dev == "cuda" else 32
    if op in ("scd_encode", "scd_reuse", "scd_patch", "kv_quant", "kv_dequant"):
        kvh = max(1, f["kv_dim"] // (2 * d))
        t = f["tokens"]
        slots = torch.randperm(t, generator=gen, device=dev).to(torch.int32)
        pos = torch.arange(t, dtype=torch.int32, device=dev)
        kc = torch.empty(-(-t // PAGE), PAGE, kvh, d, dtype=dt, device=dev)
        vc = torch.empty_like(kc)
    if op == "scd_encode":
        k, v = (_rand(t, kvh, d, dtype=dt, dev=dev, gen=gen) for _ in range(2))
        e = _rand(kvh * d, f["rank"], dtype=dt, dev=dev, gen=gen) / math.sqrt(kvh * d)
        return lambda: scd.scd_encode(k, v, pos, e, e)
    if op == "scd_reuse":
        codes = _rand(t, f["rank"], dtype=dt, dev=dev, gen=gen)
        dec = _rand(f["rank"], kvh * d, dtype=dt, dev=dev, gen=gen) / math.sqrt(f["rank"])
        return lambda: scd.scd_reuse(codes, codes, dec, dec, pos, slots, kc, vc)
    if op == "scd_patch":
        r, hid = f["rank"], f["hidden"]
        codes = _rand(t, r, dtype=dt, dev=dev, gen=gen)
        aligner = (_rand(r, r, dtype=dt, dev=dev, gen=gen) / math.sqrt(r),
                   _rand(r, dtype=dt, dev=dev, gen=gen),
                   _rand(r, hid, dtype=dt, dev=dev, gen=gen) / math.sqrt(r),
                   _rand(hid, dtype=dt, dev=dev, gen=gen))  # fmt: skip
        wk = _rand(hid, kvh * d, dtype=dt, dev=dev, gen=gen) / math.sqrt(hid)
        return lambda: scd.scd_patch(codes, aligner, wk, wk, pos, slots, kc, vc)
    if op in ("kv_quant", "kv_dequant"):
        t16 = -(-t // PAGE) * PAGE
        k, v = (_rand(t16, kvh, d, dtype=dt, dev=dev, gen=gen) for _ in range(2))
        ids = torch.arange(t16 // PAGE, dtype=torch.int32, device=dev)
        cache = quant.QuantizedKVCache.empty(t16 // PAGE, PAGE, kvh, d, f["bits"], 32, device=dev)
        quant.quantize_kv(k, v, ids, cache)
        if op == "kv_quant":
            return lambda: quant.quantize_kv(k, v, ids, cache)
        return lambda: quant.dequantize_kv(cache, ids, dt)
    if op == "copy":
        src = torch.randint(0, 255, (f["nbytes"],), dtype=torch.uint8, generator=gen, device=dev)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    raise KvsimError(f"no runner for op {op!r}")


def time_point(op: str, f: dict, gen) -> float:
    """Median seconds of one call at features ``f``."""
    fn = runner(op, f, gen)
    if torch.cuda.is_available() and not interpreting():
        import triton

        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        fns = [fn]
        # Rotate input sets so that one pass over them exceeds twice the L2 cache.
        nbytes = sum(t.numel() * t.element_size() for t in _tensors(fn))
        while len(fns) < 8 and len(fns) * nbytes < 2 * l2:
            fns.append(runner(op, f, gen))
        state = {"i": 0}

        def call():
            fns[state["i"] % len(fns)]()
            state["i"] += 1

        return triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median") / 1e3
    # Interpreter: one wall-clock call (the number means nothing; the pipeline is what is tested).
    t0 = time.perf_counter()
    fn()
    return max(time.perf_counter() - t0, 1e-9)


def _tensors(fn) -> list[torch.Tensor]:
    """Tensors a runner's closure holds (to size the input set)."""
    out = []
    for cell in fn.__closure__ or ():
        v = cell.cell_contents
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(x for x in v if isinstance(x, torch.Tensor))
    return out


def device_meta() -> dict:
    """The device, software and timer of this run (the device part of the run record)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    import triton

    meta = {"torch": str(torch.__version__), "triton": str(triton.__version__), "date": now,
            "cuda": str(torch.version.cuda or ""), "driver": "", "device": "",
            "timer": "interpreter"}  # fmt: skip
    if torch.cuda.is_available() and not interpreting():
        meta["device"] = torch.cuda.get_device_name(0)
        meta["timer"] = "cuda_events"
        try:
            meta["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=False,
            ).stdout.strip()  # fmt: skip
        except OSError:
            meta["driver"] = "unknown"
    else:
        meta["device"] = f"cpu ({platform.processor() or platform.machine()}), triton interpreter"
    return meta


def estimate_seconds(points: dict[str, list[dict]]) -> float:
    """Rough duration: ~0.4 s a point (inputs, warm-up, repeats) plus kernel compilations."""
    return sum(0.4 * len(v) for v in points.values()) + 5.0 * sum(1 for v in points.values() if v)


def require_device() -> None:
    """Raise a one-line error unless a GPU (or Triton's interpreter) can run the kernels."""
    if not interpreting() and not torch.cuda.is_available():
        raise KvsimError(
            "kvsim calibrate needs a CUDA GPU and none is visible (torch.cuda.is_available() is "
            "False); use --dry-run to see the grid, or TRITON_INTERPRET=1 with --tiny to run the "
            "pipeline on the CPU"
        )


def calibrate(
    model: ModelSpec,
    tp: int,
    out_dir: str | Path,
    full: bool,
    ops: list[str] | None,
    log=print,
    **limits,
) -> dict:
    """Measure every op of the grid, write measurements.csv, then fit it into profile.yaml.

    The profile is fitted from the CSV as written (``fit.fit_file``: the same checks and held-out
    limits as ``kvsim fit``); ``limits`` are its ``max_mape``, ``max_error``, ``accept_error`` and
    ``show``. A refused fit raises after measurements.csv is written, so that the run is kept.
    """
    require_device()
    points = grid(model, tp, full)
    if ops:
        points = {k: v for k, v in points.items() if k in ops}
    gen = torch.Generator(device="cuda" if _setup()[0] == "cuda" else "cpu").manual_seed(0)
    run = {"model": model.name, "tensor_parallel": tp, "grid": "full" if full else "tiny",
           **device_meta()}  # fmt: skip
    rows: list[Measurement] = []
    for op, pts in points.items():
        t0 = time.perf_counter()
        for f in pts:
            rows.append(Measurement(op, f, time_point(op, f, gen)))
        log(f"  {op:12} {len(pts):4} points  {time.perf_counter() - t0:6.1f} s")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_measurements(out / "measurements.csv", rows, run)
    return fit_file(out / "measurements.csv", out / "profile.yaml", **limits)
