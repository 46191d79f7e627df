"""Tune and check the skinny GEMM (kernels/skinny_gemm.py) against cuBLAS on one GPU.

For the Llama-3-8B weight shapes (or `--shape`): every config of a grid at M = 1 (us and
TB/s read, checked against the reference), then the best config at M = 1..16 next to
cuBLAS, and the gated gate/up projection (SiLU-and-mul in its epilogue) against the
unfused pair of kernels. Weights rotate over copies that together
exceed L2, as the 32 layers of a model do. (The engine's decode step with and without
the kernel: `tessera bench latency --skinny-gemm off` against the default.)

    python benchmarks/kernels/skinny_gemm_sweep.py --out $OUT/skinny.json [--quick]
    python benchmarks/kernels/skinny_gemm_sweep.py --out $OUT/uses.json --uses $OUT/overrides.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
import torch.nn.functional as F

from tessera.kernels.silu_and_mul import silu_and_mul
from tessera.kernels.skinny_gemm import SkinnyConfig, pick_config, skinny_gemm, skinny_gemm_ref
from tessera.models.shapes import named_shape

L2_DEFEAT_BYTES = 256 << 20


def time_graph(fns, reps: int = 40) -> float:
    """Mean us per call of fns[i % len(fns)]() over `reps` calls in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fns[i % len(fns)]()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return sorted(times)[2]


def layer_shapes(name: str) -> dict[str, tuple[int, int]]:
    a = named_shape(name)
    return {"qkv": ((a.num_heads + 2 * a.num_kv_heads) * a.head_dim, a.hidden_size),
            "o": (a.hidden_size, a.num_heads * a.head_dim),
            "gate_up": (2 * a.intermediate_size, a.hidden_size),
            "down": (a.hidden_size, a.intermediate_size),
            "lm_head": (a.vocab_size, a.hidden_size)}


def grid() -> list[SkinnyConfig]:
    return [SkinnyConfig(*c) for c in itertools.product((16, 32, 64), (128, 256, 512), (4, 8),
                                                        (3, 4, 6))]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@torch.inference_mode()
def sweep(shapes, dtype, configs) -> dict:
    out = {}
    for name, (n, k) in shapes.items():
        copies = max(2, math.ceil(L2_DEFEAT_BYTES / (n * k * 2)))
        ws = [torch.randn(n, k, dtype=dtype, device="cuda") / k ** 0.5 for _ in range(copies)]
        x = torch.randn(1, k, dtype=dtype, device="cuda")
        ref = F.linear(x, ws[0])
        gb = n * k * 2 / 1e9
        cublas = time_graph([lambda w=w: F.linear(x, w) for w in ws])
        rows = []
        t0 = time.time()
        for cfg in configs:
            try:
                err = rel_err(skinny_gemm(x, ws[0], config=cfg), ref)
                us = time_graph([lambda w=w: skinny_gemm(x, w, config=cfg) for w in ws])
            except Exception as e:  # a config the compiler refuses (shared memory)
                rows.append(dict(config=cfg._asdict(), error=str(e)[:200]))
                continue
            rows.append(dict(config=cfg._asdict(), us=us, tb_s=gb / us * 1e3,
                             rel_err=err))
        ok = [r for r in rows if "us" in r]
        best = min(ok, key=lambda r: r["us"])
        default = pick_config(n, k)
        dflt = next(r for r in ok if r["config"] == default._asdict())
        out[name] = dict(n=n, k=k, copies=copies, cublas_us=cublas,
                         cublas_tb_s=gb / cublas * 1e3, best=best, default=dflt,
                         rows=rows, sweep_s=time.time() - t0)
        print(f"{name:8} cuBLAS {cublas:7.1f} us ({gb / cublas * 1e3:.2f} TB/s)  best "
              f"{best['us']:7.1f} us ({best['tb_s']:.2f}) {best['config']}  default "
              f"{dflt['us']:7.1f}  err {best['rel_err']:.1e}", flush=True)
    return out


@torch.inference_mode()
def rows_and_fusions(shapes, dtype, best) -> dict:
    res = {"rows": {}, "fused": {}}
    for name, (n, k) in shapes.items():
        cfg = SkinnyConfig(**best[name])
        copies = max(2, math.ceil(L2_DEFEAT_BYTES / (n * k * 2)))
        ws = [torch.randn(n, k, dtype=dtype, device="cuda") / k ** 0.5 for _ in range(copies)]
        per_m = {}
        for m in (1, 2, 4, 8, 16):
            x = torch.randn(m, k, dtype=dtype, device="cuda")
            per_m[m] = dict(
                cublas_us=time_graph([lambda w=w: F.linear(x, w) for w in ws]),
                skinny_us=time_graph([lambda w=w: skinny_gemm(x, w, config=cfg) for w in ws]))
        res["rows"][name] = per_m
        if name == "gate_up":
            x = torch.randn(1, k, dtype=dtype, device="cuda")
            gated = []
            for c in itertools.product((16, 32, 64), (128, 256), (4, 8), (4, 6)):
                c = SkinnyConfig(*c)
                try:
                    us = time_graph([lambda w=w: skinny_gemm(x, w, gated=True, config=c)
                                     for w in ws])
                except Exception as e:  # shared memory
                    gated.append(dict(config=c._asdict(), error=str(e)[:200]))
                    continue
                gated.append(dict(config=c._asdict(), us=us))
            res["gated_sweep"] = gated
            gcfg = SkinnyConfig(**min((g for g in gated if "us" in g),
                                      key=lambda g: g["us"])["config"])
            print(f"gated best {gcfg}", flush=True)
            res["fused"]["gate_up+silu"] = dict(
                rel_err=rel_err(skinny_gemm(x, ws[0], gated=True, config=gcfg),
                                skinny_gemm_ref(x, ws[0], gated=True)),
                fused_us=time_graph([lambda w=w: skinny_gemm(x, w, gated=True, config=gcfg)
                                     for w in ws]),
                unfused_us=time_graph([lambda w=w: silu_and_mul(skinny_gemm(x, w, config=cfg))
                                       for w in ws]),
                cublas_unfused_us=time_graph([lambda w=w: silu_and_mul(F.linear(x, w))
                                              for w in ws]))
    return res


def engine_uses(name: str) -> dict[str, tuple[int, int, bool]]:
    """(n, k, gated) as the engine's decode step asks `pick_config` for each weight."""
    sh = layer_shapes(name)
    return {"qkv": (*sh["qkv"], False), "o": (*sh["o"], False),
            "gate_up": (sh["gate_up"][0] // 2, sh["gate_up"][1], True),
            "down": (*sh["down"], False), "lm_head": (*sh["lm_head"], False)}


def pipeline_grid(k: int, gated: bool) -> list[SkinnyConfig]:
    """Tiles and pipeline depths around the defaults, for the engine's uses; every one fits
    the H100's 227 KB of shared memory (checked by compiling for sm_90). (Prefetching W
    into L2 some tiles ahead inside the loop was tried too: slower for every use and depth,
    up to 2x at 16 tiles, H100, 2026-11-26.)"""
    def span(tiles, stages):
        return [SkinnyConfig(bn, bk, 4, s) for (bn, bk) in tiles for s in stages]
    if k >= 8192:
        return span([(32, 512)], (3, 4)) + span([(32, 256)], (4, 6, 8))
    if gated:
        return span([(64, 128)], (3, 4)) + span([(32, 128)], (4, 6, 8))
    return span([(64, 128)], (6, 8, 10)) + span([(32, 128)], (8, 12)) + span([(32, 256)], (4, 6))


@torch.inference_mode()
def uses_sweep(name: str, dtype) -> dict:
    """Each engine use of the skinny GEMM at M = 1 (under PDL where on, as in the engine) over
    `pipeline_grid`; the best of each but q/k/v (which decode steps run through
    `skinny_qkv_rope`, another kernel mode) becomes an override (CONFIG_OVERRIDES' key and
    fields) to try in kernels/skinny_gemm.py."""
    out, overrides = {}, {}
    for use, (n, k, gated) in engine_uses(name).items():
        rows_w = 2 * n if gated else n
        copies = max(2, math.ceil(L2_DEFEAT_BYTES / (rows_w * k * 2)))
        ws = [torch.randn(rows_w, k, dtype=dtype, device="cuda") / k ** 0.5
              for _ in range(copies)]
        x = torch.randn(1, k, dtype=dtype, device="cuda")
        ref = skinny_gemm_ref(x, ws[0], gated=gated)
        gb = rows_w * k * 2 / 1e9
        default = pick_config(n, k, gated)
        rows = []
        for cfg in [default] + [c for c in pipeline_grid(k, gated) if c != default]:
            try:
                err = rel_err(skinny_gemm(x, ws[0], gated=gated, config=cfg), ref)
                us = time_graph([lambda w=w: skinny_gemm(x, w, gated=gated, config=cfg)
                                 for w in ws])
            except Exception as e:  # a config the compiler refuses
                rows.append(dict(config=cfg._asdict(), error=str(e)[:200]))
                continue
            rows.append(dict(config=cfg._asdict(), us=us, tb_s=gb / us * 1e3, rel_err=err))
        ok = [r for r in rows if "us" in r]
        best = min(ok, key=lambda r: r["us"])
        out[use] = dict(n=n, k=k, gated=gated, default=ok[0], best=best, rows=rows)
        if use != "qkv":  # decode steps take q/k/v through skinny_qkv_rope (block_n halved)
            overrides[f"{n},{k},{int(gated)}"] = list(best["config"].values())
        print(f"{use:8} default {ok[0]['us']:7.1f} us ({ok[0]['tb_s']:.2f} TB/s)  best "
              f"{best['us']:7.1f} ({best['tb_s']:.2f}) {tuple(best['config'].values())}  "
              f"err {best['rel_err']:.1e}", flush=True)
    return dict(uses=out, overrides=overrides)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3-8b")
    ap.add_argument("--out", default="skinny.json")
    ap.add_argument("--quick", action="store_true", help="the default config only")
    ap.add_argument("--uses", metavar="OVERRIDES_JSON",
                    help="only sweep the engine's uses over tiles and pipeline depths; write the "
                         "best of each here (CONFIG_OVERRIDES entries)")
    args = ap.parse_args()
    dtype = torch.bfloat16
    if args.uses:
        res = uses_sweep(args.shape, dtype)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
        with open(args.uses, "w") as f:
            json.dump(res["overrides"], f)
        return
    shapes = layer_shapes(args.shape)
    res: dict = {"device": torch.cuda.get_device_name(), "shape": args.shape}
    configs = grid()
    if args.quick:
        configs = sorted({pick_config(n, k) for n, k in shapes.values()})
    res["sweep"] = sweep(shapes, dtype, configs)
    best = {name: s["best"]["config"] for name, s in res["sweep"].items()}
    res.update(rows_and_fusions(shapes, dtype, best))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\n{res['device']}  ({args.shape}, bf16, us per call)")
    print(f"{'matrix':8} {'M':>3} {'cuBLAS':>8} {'skinny':>8}")
    for name, per_m in res["rows"].items():
        for m, r in per_m.items():
            print(f"{name:8} {m:3d} {r['cublas_us']:8.1f} {r['skinny_us']:8.1f}")
    for name, r in res["fused"].items():
        print(f"{name:14} fused {r['fused_us']:7.1f}  unfused {r['unfused_us']:7.1f}  "
              f"cuBLAS unfused {r['cublas_unfused_us']:7.1f}  err {r['rel_err']:.1e}")


if __name__ == "__main__":
    main()
