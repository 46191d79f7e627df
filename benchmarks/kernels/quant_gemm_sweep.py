"""Check and time the quantized GEMMs (kernels/skinny_gemm.py on a QuantizedWeight for
decode steps, kernels/quant_gemm.py for more rows) on one GPU, against bf16.

--check: every kind (int8, fp8, int4 in groups of 128 and 32, grouped int8) and every
mode (plain, bias, gated, q/k/v + rotary + KV write, residual add + pending norm, a
pending norm finished; quant_gemm) in bf16 against quant_linear_ref composed with the
unfused ops, plus the PTX conversions against plain casts (bit-equal); exits 1 on a miss.
Timing: the Llama-3-8B and 70B projections (qkv, o, gate_up, down), weights rotating over
copies that exceed L2 (as a model's layers do), CUDA graphs: skinny at M = 1, 4, 16
(default config, and at M = 1 a grid of configs, K split or not: `skinny_grid`) next
to the bf16 skinny GEMM and cuBLAS (F.linear); quant_gemm at M = 64, 256, 2048 (the
table's config and a few others) next to cuBLAS. Each row: us, GB/s of the weight bytes
read (data + scales), TFLOP/s, and the ratio to cuBLAS bf16 (the JSON: every config's
time too); for fp8 above 16 rows also W8A8 (the activations' quantization and
torch._scaled_mm, as the model runs it) and _scaled_mm alone. --kinds fp8a8: fp8 with
skinny_gemm.FP8_ACTIVATIONS (up to A8_MAX_ROWS rows: x quantized to fp8 in the kernel, the
fp8 MMA; at M = 1 its own grid), and int8x16 / fp8x16: skinny_gemm.FP16_X (up to
X16_MAX_ROWS rows: x made fp16 in the kernel, W widened to fp16; at M = 1 its own grid),
timed only. One call does both:

    python benchmarks/kernels/quant_gemm_sweep.py --check --models 8b --out $OUT/q8b.json
    python benchmarks/kernels/quant_gemm_sweep.py --models 70b --out $OUT/q70b.json
    python benchmarks/kernels/quant_gemm_sweep.py --check-only
    python benchmarks/kernels/quant_gemm_sweep.py --models 8b --kinds int8 --rows 1 --slices
(--gated: the skinny gate_up product as the model runs it, two panels a program.)
(Triton compiles each config once, ~1 s each: a model's full sweep is several minutes;
--quick times the default configs only.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from skinny_gemm_sweep import L2_DEFEAT_BYTES, time_graph  # noqa: E402

from tessera.kernels import quant_tiles  # noqa: E402
from tessera.kernels import skinny_gemm as skinny_module  # noqa: E402
from tessera.kernels.norm_epilogue import pending_norm_ref  # noqa: E402
from tessera.kernels.quant_gemm import QuantGemmConfig, pick_config as gemm_config  # noqa: E402
from tessera.kernels.quant_gemm import quant_gemm  # noqa: E402
from tessera.kernels.quant_tiles import quant_args, weight_bytes  # noqa: E402
from tessera.kernels.reference import rms_norm_ref, rotary_kv_write_ref  # noqa: E402
from tessera.kernels.skinny_gemm import (MAX_ROWS, SkinnyConfig, launch_config,  # noqa: E402
                                         pick_config, skinny_gemm, skinny_gemm_add_norm,
                                         skinny_gemm_ref, skinny_qkv_rope)
from tessera.layers.rotary import RotaryEmbedding  # noqa: E402
from tessera.kernels.fp8_rows import quantize_rows_fp8  # noqa: E402
from tessera.quant.formats import quant_linear_ref, quantize  # noqa: E402
from tessera.quant.fp8 import w8a8_linear, w8a8_supported  # noqa: E402

KINDS = {"int8": ("int8", 0), "fp8": ("fp8", 0), "int4": ("int4", 128),
         "int4g32": ("int4", 32), "int8g32": ("int8", 32)}
# timed only: fp8 with skinny_gemm.FP8_ACTIVATIONS (x quantized to fp8 in the kernel, the
# fp8 MMA: kernels/skinny_a8.py; checked by tests/kernels/test_skinny_a8.py on the GPU)
# and int8 / fp8 with skinny_gemm.FP16_X (x made fp16 in the kernel, W widened to fp16:
# tests/kernels/test_skinny_x16.py)
TIMED_KINDS = {**KINDS, "fp8a8": ("fp8", 0), "int8x16": ("int8", 0), "fp8x16": ("fp8", 0)}
MODELS = {"8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
                 "down": (4096, 14336)},
          "70b": {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192),
                  "down": (8192, 28672)}}
GEMM_GRID = [QuantGemmConfig(*c) for c in ((64, 64, 128, 4, 4), (128, 64, 128, 4, 3),
                                           (128, 128, 128, 8, 3), (256, 128, 64, 8, 3),
                                           (64, 64, 256, 4, 4), (64, 128, 128, 4, 4),
                                           (64, 128, 256, 8, 3), (32, 64, 256, 4, 4))]
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
DEVICE = "cuda"  # (the checks' device; the CPU interpreter runs them too, in fp16)


def skinny_grid(kind: str) -> list:
    """Configs to time at M = 1: panels of 16, 32, 64 rows (a warp per 16-row MMA tile, so
    none widens another's rows), steps of 256 or 512 bytes a row, K split in 1-8; fp8a8:
    panels of 64 or 128 rows on a warpgroup (the fp8 MMA's), steps of 128-512, 3-4
    stages, K split in 1-8; x16 (x made fp16): panels of 32-128 rows, 16 or 32 a warp (a
    warp's x tile serves more of W at 32), steps of 256 or 512 bytes, K split in 1-8."""
    if kind.endswith("x16"):
        return [SkinnyConfig(bn, step, warps, 3 if bn * step > 16384 else 4, split)
                for bn, warps in ((32, 2), (64, 2), (64, 4), (128, 4)) for step in (256, 512)
                for split in (1, 2, 4, 8) if bn * step <= 32768]
    if kind == "fp8a8":
        return [SkinnyConfig(bn, step, 4, stages, split) for bn in (64, 128)
                for step in (128, 256, 512) for stages in (3, 4) for split in (1, 2, 4, 8)
                if bn * step * stages <= 160 << 10]
    per_byte = 2 if kind == "int4" else 1
    return [SkinnyConfig(bn, step * per_byte, bn // 16, 3 if bn * step > 16384 else 4, split)
            for bn in (16, 32, 64) for step in (256, 512) for split in (1, 2, 4, 8)]


def sliced_grid(kind: str, group: int) -> list:
    """Configs with each step's columns sliced among the warps (SkinnyConfig.slices): a
    per-row W (int8, fp8): panels of 32 or 64 rows, steps of 256 or 512 bytes a row, 4 or
    8 warps (slices), K split in 1-4; in groups, a group a slice: 4 or 8 groups a step."""
    if group:
        return [SkinnyConfig(bn, warps * group, warps, 4, split, warps)
                for bn in (32, 64) for warps in (4, 8) for split in (1, 2, 4)
                if bn * warps * group <= 32768]
    return [SkinnyConfig(bn, step, warps, 3 if bn * step > 16384 else 4, split, warps)
            for bn in (32, 64) for step in (256, 512) for warps in (4, 8) for split in (1, 2, 4)]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)
            ).item()


def rand(*shape, dtype, scale=1.0, shift=0.0):
    return torch.randn(*shape, device=DEVICE).mul_(scale).add_(shift).to(dtype)


def check_cases(dtype):
    """(name, got, ref) for every mode and kind in dtype (small odd shapes, one real)."""
    eps = 1e-5
    for label, (kind, group) in KINDS.items():
        for rows, n, k in ((1, 100, 384), (16, 4096, 4096)):  # masked tiles; whole ones
            x = rand(rows, k, dtype=dtype)
            w = rand(2 * n, k, dtype=dtype, scale=k ** -0.5)
            qw, qg = quantize(kind, w[:n], group), quantize(kind, w, group)
            b = rand(n, dtype=dtype)
            yield f"{label} M={rows} plain", skinny_gemm(x, qw), quant_linear_ref(x, qw)
            yield f"{label} M={rows} bias", skinny_gemm(x, qw, b), quant_linear_ref(x, qw, b)
            yield (f"{label} M={rows} gated", skinny_gemm(x, qg, gated=True),
                   skinny_gemm_ref(x, qg, gated=True))
            res, g = rand(rows, n, dtype=dtype), rand(n, dtype=dtype, scale=0.1, shift=1.0)
            got = skinny_gemm_add_norm(x, qw, None, res, g)
            ref = pending_norm_ref(res + quant_linear_ref(x, qw), g,
                                   pick_config(n, k, False, 2, kind, group).block_n, MAX_ROWS)
            yield f"{label} M={rows} add_norm residual", got.residual, ref.residual
            yield f"{label} M={rows} add_norm scaled", got.scaled, ref.scaled
            s, gk = rand(rows, k, dtype=dtype, scale=3.0), rand(k, dtype=dtype, scale=0.1,
                                                                  shift=1.0)
            pend = pending_norm_ref(s, gk, 32, MAX_ROWS)
            yield (f"{label} M={rows} norm_in gated",
                   skinny_gemm(pend.scaled, qg, gated=True, norm_parts=pend.parts, eps=eps),
                   skinny_gemm_ref(rms_norm_ref(s, gk, eps), qg, gated=True))
            yield from rope_case(label, kind, group, x, dtype)
        for rows in (17, 64, 300):
            x = rand(rows, 1024, dtype=dtype)
            qw = quantize(kind, rand(1000, 1024, dtype=dtype, scale=1024 ** -0.5), group)
            b = rand(1000, dtype=dtype)
            yield f"{label} quant_gemm M={rows}", quant_gemm(x, qw, b), quant_linear_ref(x, qw, b)


def rope_case(label, kind, group, x, dtype):
    rows, k = x.shape
    num_q, num_kv, head_dim = 8, 2, 128
    n = (num_q + 2 * num_kv) * head_dim
    qw = quantize(kind, rand(n, k, dtype=dtype, scale=k ** -0.5), group)
    rope = RotaryEmbedding(head_dim, 4096, 500000.0).to(DEVICE)
    pos = torch.randperm(4096, device=DEVICE)[:rows]
    slots = torch.randperm(64, device=DEVICE)[:rows]
    cache = torch.zeros(2, 4, 16, num_kv, head_dim, dtype=dtype, device=DEVICE)
    ref_cache = cache.clone()
    q = skinny_qkv_rope(x, qw, None, pos, rope.cos_sin, cache, slots, num_q, num_kv)
    qq, kk, vv = quant_linear_ref(x, qw).split([num_q * head_dim, num_kv * head_dim,
                                                num_kv * head_dim], dim=-1)
    ref_q = rotary_kv_write_ref(qq.view(rows, num_q, head_dim), kk.view(rows, num_kv, head_dim),
                                vv.view(rows, num_kv, head_dim), pos, rope.cos_sin, ref_cache,
                                slots)
    yield f"{label} M={rows} qkv_rope q", q, ref_q
    yield f"{label} M={rows} qkv_rope cache", cache, ref_cache


@torch.inference_mode()
def check() -> list[dict]:
    out = []
    for dtype in (torch.bfloat16,):  # (fp16: tests/kernels/test_skinny_quant.py on the GPU)
        for name, got, ref in check_cases(dtype):
            err = rel_err(got, ref)
            out.append(dict(case=f"{str(dtype)[6:]} {name}", rel_err=err, ok=err < TOL[dtype]))
    for label, (kind, group) in KINDS.items():  # the PTX conversions are exact
        for dtype in (torch.bfloat16,):
            x = rand(7, 1024, dtype=dtype)
            qw = quantize(kind, rand(512, 1024, dtype=dtype, scale=1 / 32), group)
            xs = rand(100, 1024, dtype=dtype)
            fast = skinny_gemm(x, qw, gated=True), quant_gemm(xs, qw)
            quant_tiles.FAST_DEQUANT = False
            plain = skinny_gemm(x, qw, gated=True), quant_gemm(xs, qw)
            quant_tiles.FAST_DEQUANT = True
            same = all(torch.equal(a, b) for a, b in zip(fast, plain))
            out.append(dict(case=f"{str(dtype)[6:]} {label} PTX == casts", rel_err=0.0, ok=same))
    bad = [r for r in out if not r["ok"]]
    for r in bad or out[-3:]:
        print(f"{'ok ' if r['ok'] else 'BAD'} {r['case']:50} rel err {r['rel_err']:.2e}")
    print(f"check: {len(out) - len(bad)}/{len(out)} ok", flush=True)
    return out


def copies(nbytes: int) -> int:
    return max(2, math.ceil(L2_DEFEAT_BYTES / nbytes))


def timed(fns) -> float:
    try:
        return time_graph(fns)
    except Exception as e:  # a config the compiler refuses (shared memory)
        print(f"  skipped: {str(e)[:120]}", flush=True)
        return float("nan")


@torch.inference_mode()
def sweep(models, kinds, quick: bool, rows=(1, 4, 16, 64, 256, 2048),
          sliced: bool = False, gated: bool = False) -> list[dict]:
    rows_out = []
    dt = torch.bfloat16
    for model in models:
        for name, (n, k) in MODELS[model].items():
            dense = [torch.randn(n, k, device="cuda", dtype=dt) / k ** 0.5
                     for _ in range(copies(n * k * 2))]
            base = {}
            for m in rows:
                x = torch.randn(m, k, device="cuda", dtype=dt)
                base[m] = dict(cublas=timed([lambda w=w: F.linear(x, w) for w in dense]))
                if m <= MAX_ROWS:
                    base[m]["skinny_bf16"] = timed([lambda w=w: skinny_gemm(x, w) for w in dense])
            as_gated = gated and name == "gate_up"  # as the model runs it: silu(g) * u
            for label in kinds:
                kind, group = TIMED_KINDS[label]
                skinny_module.FP8_ACTIVATIONS = label == "fp8a8"
                skinny_module.FP16_X = label.endswith("x16")
                first = quantize(kind, dense[0], group)  # as many copies as exceed L2
                qws = [first] + [quantize(kind, dense[i % len(dense)], group)
                                 for i in range(1, copies(weight_bytes(first)))]
                gb = weight_bytes(qws[0]) / 1e9
                for m in rows:
                    x = torch.randn(m, k, device="cuda", dtype=dt)
                    if m <= MAX_ROWS:
                        grid = skinny_grid(label if label in ("fp8a8", "int8x16", "fp8x16")
                                           else kind)
                        if sliced and label in KINDS:
                            grid = sliced_grid(kind, group)
                        configs = [None] if quick or m > 1 else [None] + grid
                        run = lambda qw, c: skinny_gemm(x, qw, gated=as_gated,  # noqa: E731
                                                        config=c)
                    else:
                        configs = [None] if quick else [None] + GEMM_GRID
                        run = lambda qw, c: quant_gemm(x, qw, config=c)  # noqa: E731
                    res = []
                    for cfg in configs:
                        us = timed([lambda qw=qw, c=cfg: run(qw, c) for qw in qws])
                        res.append((us, cfg))
                    best_us, best_cfg = min(res, key=lambda r: (math.isnan(r[0]), r[0]))
                    default = res[0][0]
                    if best_cfg is None:  # the default: as launched (a8, the one-wave fit)
                        best_cfg = (launch_config(None, quant_args(qws[0]),
                                                  n // 2 if as_gated else n, as_gated, x)
                                    if m <= MAX_ROWS else gemm_config(m, kind, group))
                    fp8_runs = {}  # this kind's own: the W8A8 product as the model runs it
                    if kind == "fp8" and m > MAX_ROWS and w8a8_supported(x.device):
                        fp8_runs["w8a8"] = timed([lambda qw=qw: w8a8_linear(x, qw) for qw in qws])
                        xq, sx = quantize_rows_fp8(x)
                        fp8_runs["scaled_mm"] = timed([lambda qw=qw: torch._scaled_mm(
                            xq, qw.data.t(), scale_a=sx, scale_b=qw.scale.view(1, -1),
                            out_dtype=dt) for qw in qws])
                    row = dict(model=model, matrix=name, n=n, k=k, kind=label, m=m,
                               default_us=default, best_us=best_us, best_config=list(best_cfg),
                               gb_s=gb / default * 1e6, tflops=2 * m * n * k / default / 1e6,
                               configs=[[list(c) if c else None, us] for us, c in res],
                               **{f"{b}_us": v for b, v in {**base[m], **fp8_runs}.items()})
                    rows_out.append(row)
                    print_row(row)
                del qws
                skinny_module.FP8_ACTIVATIONS = skinny_module.FP16_X = False
            del dense
            torch.cuda.empty_cache()
    return rows_out


def print_row(r: dict) -> None:
    vs = r["cublas_us"] / r["default_us"]
    sk = f" skinny bf16 {r['skinny_bf16_us']:7.1f}" if "skinny_bf16_us" in r else " " * 20
    if "w8a8_us" in r:
        sk = f" w8a8 {r['w8a8_us']:7.1f} (_scaled_mm {r['scaled_mm_us']:7.1f})"
    print(f"{r['model']:3} {r['matrix']:7} {r['kind']:7} M={r['m']:<4} {r['default_us']:8.1f} us"
          f" {r['gb_s']:7.0f} GB/s {r['tflops']:6.1f} TF/s | cuBLAS bf16 {r['cublas_us']:8.1f}"
          f" ({vs:4.2f}x){sk} | best {r['best_us']:8.1f} {r['best_config']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="quant_gemm.json")
    ap.add_argument("--check", action="store_true", help="check correctness first")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--kinds", default="int8,fp8,int4,int4g32",
                    help=f"of {', '.join(TIMED_KINDS)}")
    ap.add_argument("--quick", action="store_true", help="default configs only")
    ap.add_argument("--rows", default="1,4,16,64,256,2048", help="rows of x to time")
    ap.add_argument("--slices", action="store_true",
                    help="at one row: the K-sliced configs (`sliced_grid`)")
    ap.add_argument("--gated", action="store_true",
                    help="the skinny gate_up product gated (two panels a program, SiLU)")
    ap.add_argument("--int4-halves", action="store_true",
                    help="int4 groups as two half-width dots (quant_tiles.INT4_HALVES)")
    args = ap.parse_args()
    unknown = sorted(set(args.kinds.split(",")) - set(TIMED_KINDS))
    if unknown:
        ap.error(f"--kinds takes {', '.join(TIMED_KINDS)}, not {', '.join(unknown)}")
    quant_tiles.INT4_HALVES = args.int4_halves
    res: dict = {"device": torch.cuda.get_device_name()}
    if args.check or args.check_only:
        res["check"] = check()
    if not args.check_only:
        print(f"\n{res['device']}: bf16 activations; us per call, weight GB/s, TFLOP/s")
        res["sweep"] = sweep(args.models.split(","), args.kinds.split(","), args.quick,
                             [int(r) for r in args.rows.split(",")], args.slices,
                             args.gated)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    if args.check or args.check_only:
        sys.exit(0 if all(r["ok"] for r in res["check"]) else 1)


if __name__ == "__main__":
    main()
