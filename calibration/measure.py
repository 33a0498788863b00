"""Time the real kernels over a grid and write a calibration profile (``kvsim calibrate``).

Before any timing, every point is checked to run exactly as its features record it
(``check_point``; ``attention_layout`` builds an attention point's segments and query positions).
Each op's runner builds random inputs (never zeros) for one grid point and returns a callable
that runs the real kernel: cuBLAS GEMMs through ``torch.matmul``, the Triton MSA, elementwise
(RMSNorm, rotary, SiLU·mul), SCD, quantization and SSM kernels, device copies. On a GPU a point is
timed with CUDA events by
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


def _unrealizable(f: dict, why: str) -> KvsimError:
    return KvsimError(f"attention point {f}: {why}; the kernel cannot run it as recorded")


def attention_layout(f: dict, dev: str = "cpu") -> dict:
    """The index inputs of one attention point: the KV segments and query positions it runs.

    A decode point (``q_tokens == seqs``) gives each sequence ``kv_tokens / seqs`` KV tokens in
    ``segments / seqs`` equal segments and one query at its last position. A prefill point (one
    sequence) has ``kv_tokens − q_tokens`` cached tokens in ``segments − 1`` segments followed by
    one segment of its ``q_tokens`` new tokens; with ``segments == 1`` one segment holds all.

    Returns:
        ``seq_lens`` (KV tokens per sequence), ``segments`` int32 [seqs, max_segs, 3] of
        (slot_start, length, pos_start), ``n_segments`` int32 [seqs], ``q_pos`` int32 [q_tokens]
        and ``cu_q`` int32 [seqs + 1] (None for decode), as ``msa_decode``/``msa_prefill`` take.
    Raises:
        KvsimError: the features cannot be realized exactly (no point runs other than recorded).
    """
    q_tok, kv, pairs, seqs, nseg = (f[k] for k in ("q_tokens", "kv_tokens", "qk_pairs", "seqs",
                                                   "segments"))  # fmt: skip
    i32 = {"dtype": torch.int32, "device": dev}
    if seqs >= 1 and q_tok == seqs:  # decode: one query per sequence
        ctx, per = kv // seqs, nseg // seqs
        if kv % seqs or nseg % seqs or not 1 <= per <= ctx or pairs != kv:
            raise _unrealizable(
                f,
                "a decode batch needs kv_tokens and segments divisible by seqs, "
                "1 ≤ segments/seqs ≤ kv_tokens/seqs and qk_pairs = kv_tokens",
            )
        return {
            "seq_lens": [ctx] * seqs,
            "segments": torch.tensor([_segments(ctx, per)] * seqs, **i32),
            "n_segments": torch.full((seqs,), per, **i32),
            "q_pos": torch.full((seqs,), ctx - 1, **i32),
            "cu_q": None,
        }
    cached = kv - q_tok
    if seqs != 1 or q_tok < 1 or cached < 0 or pairs != q_tok * cached + q_tok * (q_tok + 1) // 2:
        raise _unrealizable(
            f,
            "a prefill chunk is one sequence with kv_tokens ≥ q_tokens ≥ 1 and "
            "qk_pairs = q_tokens·cached + q_tokens·(q_tokens+1)/2",
        )
    if nseg == 1:
        pieces = [(0, kv, 0)]
    elif 1 <= nseg - 1 <= cached:  # cached prefix in segments, then the new tokens
        pieces = _segments(cached, nseg - 1) + [(cached, q_tok, cached)]
    else:
        raise _unrealizable(
            f,
            f"{cached} cached tokens cannot fill {nseg - 1} segments before "
            "the new tokens' segment",
        )
    return {
        "seq_lens": [kv],
        "segments": torch.tensor([pieces], **i32),
        "n_segments": torch.tensor([nseg], **i32),
        "q_pos": torch.arange(cached, kv, **i32),
        "cu_q": torch.tensor([0, q_tok], **i32),
    }


def kv_split(kv_dim: int, max_head_dim: int) -> tuple[int, int]:
    """(kv_heads, head_dim) with 2·kv_heads·head_dim = kv_dim for the K/V ops (SCD, quantization):
    the largest head dim of 128, 64, 32 up to ``max_head_dim`` that divides kv_dim / 2."""
    for d in (128, 64, 32):
        if d <= max_head_dim and kv_dim % (2 * d) == 0:
            return kv_dim // (2 * d), d
    raise KvsimError(
        f"kv_dim {kv_dim} is not 2 × kv_heads × a head dim of 128, 64 or 32 "
        f"(≤ {max_head_dim}); the K/V kernels cannot run it as recorded"
    )


def check_point(op: str, f: dict, max_head_dim: int) -> None:
    """Raise unless ``runner`` runs ``op`` at exactly the features ``f`` (no kernel is run)."""
    if op == "attention":
        attention_layout(f)
    elif op == "elementwise":
        if f["tensors"] not in (2, 3, 4) or (f["tensors"] == 2 and f["width"] % 32):
            raise KvsimError(
                f"elementwise point {f}: tensors must be 4 (add + RMSNorm), 3 (SiLU·mul) or 2 "
                "(rotary, width a multiple of the 32-wide head used to run it)"
            )
    elif "kv_dim" in f:
        kv_split(f["kv_dim"], max_head_dim)
    elif op == "copy" and f["path"] != "d2d":
        raise KvsimError(f"copy point {f}: only device-to-device copies are measured")


def runner(op: str, f: dict, gen) -> Callable[[], object]:
    """A callable that runs the real kernel of ``op`` at features ``f`` on fresh random inputs."""
    from kvsim.kernels import elementwise, msa, quant, scd, ssm

    dev, dt = _setup()
    check_point(op, f, 128 if dev == "cuda" else 32)
    if op == "gemm":
        a = _rand(f["tokens"], f["in_dim"], dtype=dt, dev=dev, gen=gen)
        b = _rand(f["in_dim"], f["out_dim"], dtype=dt, dev=dev, gen=gen)
        return lambda: torch.matmul(a, b)
    if op == "elementwise":
        t, w, n = f["tokens"], f["width"], f["tensors"]
        if n == 4:
            x, res = (_rand(t, w, dtype=dt, dev=dev, gen=gen) for _ in range(2))
            weight = _rand(w, dtype=dt, dev=dev, gen=gen)
            return lambda: elementwise.fused_add_rms_norm(x, res, weight)
        if n == 3:
            gu = _rand(t, 2 * w, dtype=dt, dev=dev, gen=gen)
            return lambda: elementwise.silu_and_mul(gu)
        d = 128 if w % 128 == 0 else 64 if w % 64 == 0 else 32
        qk = _rand(t, w // d, d, dtype=dt, dev=dev, gen=gen)
        pos = torch.randint(0, 4096, (t,), generator=gen, device=dev, dtype=torch.int32)
        cs = elementwise.rope_cache(4096, d, device=dev)
        return lambda: elementwise.rotary(qk, pos, cs)
    if op == "attention":
        heads, kvh, d = f["heads"], f["kv_heads"], f["head_dim"]
        lay = attention_layout(f, dev)
        seg, n, pos, cu = lay["segments"], lay["n_segments"], lay["q_pos"], lay["cu_q"]
        k, v, table = _paged(lay["seq_lens"], kvh, d, dt, dev, gen)
        q = _rand(f["q_tokens"], heads, d, dtype=dt, dev=dev, gen=gen)
        if cu is None:
            ctx = lay["seq_lens"][0]
            return lambda: msa.msa_decode(q, pos, k, v, table, seg, n, max_kv_len=ctx)
        q_tok = f["q_tokens"]
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
    if op in ("scd_encode", "scd_reuse", "scd_patch", "kv_quant", "kv_dequant"):
        kvh, d = kv_split(f["kv_dim"], 128 if dev == "cuda" else 32)
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
    for op, pts in points.items():  # before any timing: a bad point costs no GPU time
        for f in pts:
            check_point(op, f, 128 if _setup()[0] == "cuda" else 32)
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
