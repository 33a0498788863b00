"""Measurement grids: the op shapes a calibration times, chosen from what the simulator asks for.

For a model at tensor-parallel degree TP, the simulator prices its five GEMMs at every batch token
count, batched attention over decode batches and prefill chunks with cached segments, and (for
hybrid models and transfer codecs) SSM, SCD and quantization ops. Grids are dense where cost bends:
small token counts (launch- and weight-bound), powers of two (tile boundaries) and their midpoints.
``tiny`` grids are for running the whole pipeline under Triton's interpreter in tests.
"""

from __future__ import annotations

from kvsim.simulator.catalog import ModelSpec


def _tokens(full: bool) -> list[int]:
    if not full:
        return [1, 8, 24, 64]
    out = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768]
    return out + [1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384]


def gemm_points(model: ModelSpec, tp: int, full: bool) -> list[dict]:
    hd, q, kv = model.head_dim, model.heads // tp, max(1, model.kv_heads // tp)
    shapes = [
        (model.hidden, (q + 2 * kv) * hd),
        (q * hd, model.hidden),
        (model.hidden, 2 * model.intermediate // tp),
        (model.intermediate // tp, model.hidden),
        (model.hidden, model.vocab // tp),
    ]
    if not full:  # the interpreter multiplies small matrices only
        shapes = [(64, 96), (128, 64), (32, 256)]
    return [{"tokens": t, "in_dim": i, "out_dim": o} for t in _tokens(full) for i, o in shapes]


def attention_points(model: ModelSpec, tp: int, full: bool) -> list[dict]:
    """Decode batches and prefill chunks; each point is one batched launch's shape."""
    heads, kvh, hd = model.heads // tp, max(1, model.kv_heads // tp), model.head_dim
    pts = []
    if full:
        decode = [(b, c, s) for b in (1, 4, 16, 64, 128, 256) for c in (512, 2048, 8192, 32768)
                  for s in (1, 4) if b * c <= 2_000_000]  # fmt: skip
        # Cached segments need a cached prefix: a chunk with nothing cached is one segment.
        prefill = [(q, c, s) for q in (128, 512, 2048, 8192) for c in (0, 4096, 16384)
                   for s in ((1, 8) if c else (1,))]  # fmt: skip
    else:
        heads, kvh, hd = 4, 2, 32
        decode = [(1, 64, 1), (2, 96, 2), (3, 48, 1)]
        prefill = [(16, 0, 1), (32, 48, 2)]
    for b, c, s in decode:
        pts.append(
            {
                "q_tokens": b,
                "kv_tokens": b * c,
                "qk_pairs": b * c,
                "seqs": b,
                "segments": b * s,
                "heads": heads,
                "kv_heads": kvh,
                "head_dim": hd,
                "kv_dim": 2 * kvh * hd,
            }
        )
    for q, c, s in prefill:
        pts.append(
            {
                "q_tokens": q,
                "kv_tokens": c + q,
                "qk_pairs": q * c + q * (q + 1) // 2,
                "seqs": 1,
                "segments": s,
                "heads": heads,
                "kv_heads": kvh,
                "head_dim": hd,
                "kv_dim": 2 * kvh * hd,
            }
        )
    return pts


def elementwise_points(model: ModelSpec, tp: int, full: bool) -> list[dict]:
    """The three fused passes at the model's widths: residual add + RMSNorm over ``hidden`` (4
    tensors), rotary over the queries and keys (2), SiLU·mul over the MLP's intermediate (3)."""
    if full:
        hd = model.head_dim or 128
        rope = (max(1, model.heads // tp) + max(1, model.kv_heads // tp)) * hd
        inter = (model.intermediate or (model.moe.intermediate if model.moe else 0)) // tp
        widths = [(model.hidden, 4), (rope, 2)] + ([(inter, 3)] if inter else [])
        toks = (1, 8, 64, 256, 1024, 4096, 16384)
    else:
        widths, toks = [(64, 4), (96, 2), (48, 3)], (1, 8, 24)
    return [{"tokens": t, "width": w, "tensors": n} for t in toks for w, n in widths]


def ssm_points(full: bool) -> tuple[list[dict], list[dict]]:
    if full:
        scan = [{"tokens": t, "heads": 64, "head_dim": 64, "state_dim": 128}
                for t in (64, 256, 1024, 4096, 16384)]  # fmt: skip
        step = [{"batch": b, "heads": 64, "head_dim": 64, "state_dim": 128}
                for b in (1, 8, 32, 128, 256)]  # fmt: skip
    else:
        scan = [
            {"tokens": t, "heads": 2, "head_dim": 16, "state_dim": 16} for t in (16, 40, 64, 96)
        ]
        step = [{"batch": b, "heads": 2, "head_dim": 16, "state_dim": 16} for b in (1, 2, 3, 4)]
    return scan, step


def scd_points(model: ModelSpec, full: bool) -> tuple[list[dict], list[dict], list[dict]]:
    kv_dim = model.kv_dim(1) if full else 128
    hidden = model.hidden if full else 96
    toks = (256, 1024, 4096, 16384) if full else (16, 48)
    ranks = (64, 128, 256, 512) if full else (16, 32)
    enc = [{"tokens": t, "kv_dim": kv_dim, "rank": r} for t in toks for r in ranks]
    reuse = [{"tokens": t, "rank": r, "kv_dim": kv_dim} for t in toks for r in ranks]
    patch = [{"tokens": t, "rank": r, "hidden": hidden, "kv_dim": kv_dim}
             for t in toks for r in ranks[:2]]  # fmt: skip
    return enc, reuse, patch


def quant_points(model: ModelSpec, full: bool) -> list[dict]:
    kv_dim = model.kv_dim(1) if full else 64
    toks = (1024, 4096, 16384, 65536) if full else (16, 48)
    return [{"tokens": t, "kv_dim": kv_dim, "bits": b} for t in toks for b in (8, 4, 2)]


def copy_points(full: bool) -> list[dict]:
    sizes = [1 << k for k in (range(12, 31, 2) if full else range(8, 16, 2))]
    return [{"nbytes": n, "path": "d2d"} for n in sizes]


def grid(model: ModelSpec, tp: int = 1, full: bool = True) -> dict[str, list[dict]]:
    """Every op's measurement points."""
    scan, step = ssm_points(full)
    enc, reuse, patch = scd_points(model, full)
    q = quant_points(model, full)
    return {
        "gemm": gemm_points(model, tp, full),
        "attention": attention_points(model, tp, full),
        "elementwise": elementwise_points(model, tp, full),
        "ssm_scan": scan,
        "ssm_step": step,
        "scd_encode": enc,
        "scd_reuse": reuse,
        "scd_patch": patch,
        "kv_quant": q,
        "kv_dequant": q,
        "copy": copy_points(full),
    }


def estimate_seconds(points: dict[str, list[dict]]) -> float:
    """Rough duration: ~0.4 s a point (inputs, warm-up, repeats) plus kernel compilations.

    NOTE: here and not beside the timing code, so that ``kvsim calibrate --dry-run`` needs no
    torch (the kernels extra)."""
    return sum(0.4 * len(v) for v in points.values()) + 5.0 * sum(1 for v in points.values() if v)
