"""Check and time the CUDA int4 decode GEMV (kernels/int4_gemv.py) against the Triton skinny
GEMM on the same weights (int4 g128; with --kinds also int8 and fp8 per row, which
int4_gemv.ENABLED_KINDS takes only when set), as the model runs each product: o and down with the
residual add that leaves a norm pending, gate/up gated and q/k/v with rotary and the
KV-cache write, each finishing a pending norm. Weights
rotate over copies that exceed L2, launches in CUDA graphs (skinny_gemm_sweep.time_graph).
Each row: us, GB/s of the weight bytes read (data + scales + offsets) and their share of
4.15 TB/s (the H200's copy speed), max relative error against skinny_gemm_ref; at the
end, the best config of each product. One GPU:

    python benchmarks/kernels/int4_gemv_sweep.py --models 8b --rows 1 --out $OUT/int4.json
    python benchmarks/kernels/int4_gemv_sweep.py --kinds int8,fp8 --quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from skinny_gemm_sweep import L2_DEFEAT_BYTES, time_graph  # noqa: E402

from tessera.kernels import int4_gemv as module  # noqa: E402
from tessera.kernels.int4_gemv import (Int4Config, int4_gemv, int4_gemv_add_norm,  # noqa: E402
                                       int4_gemv_qkv_rope)
from tessera.kernels.int4_gemv_options import step_columns  # noqa: E402
from tessera.kernels.norm_epilogue import pending_norm_ref  # noqa: E402
from tessera.kernels.quant_tiles import weight_bytes  # noqa: E402
from tessera.kernels.skinny_config import MAX_ROWS  # noqa: E402
from tessera.kernels.skinny_gemm import (skinny_gemm, skinny_gemm_add_norm,  # noqa: E402
                                         skinny_gemm_ref, skinny_qkv_rope)
from tessera.quant.formats import quantize  # noqa: E402

MODELS = {"8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
                 "down": (4096, 14336)},
          "70b": {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192),
                  "down": (8192, 28672)}}
MODES = {"qkv": "rope", "o": "add_norm", "gate_up": "gated", "down": "add_norm"}
HEADS = {"8b": (32, 8, 128), "70b": (64, 8, 128)}  # query heads, key/value heads, dims
COPY_TBS = 4.15


def grid(n: int, k: int, gated: bool, kind: str) -> list[Int4Config]:
    steps = k // step_columns(kind)
    out = []
    for tiles in (1, 2, 4):
        if gated and tiles > 1 or n % (16 * tiles):
            continue
        for warps in (4, 8, 16):
            if steps % warps:
                continue
            for unroll in (2, 4, 8):
                if unroll <= steps // warps:
                    out.append(Int4Config(tiles, warps, unroll))
                    if warps >= 8:  # registers capped so that two blocks fit an SM
                        out.append(Int4Config(tiles, warps, unroll, 2))
    return out


def case(n, k, mode, rows, heads, kind, dtype=torch.bfloat16):
    """The product's callables over weight copies: (cuda(), triton(), reference check)."""
    gated = mode == "gated"
    w0 = torch.randn(n, k, device="cuda", dtype=dtype) * k ** -0.5
    qw = quantize(kind, w0, 128 if kind == "int4" else 0)
    count = max(2, math.ceil(L2_DEFEAT_BYTES / weight_bytes(qw)))
    ws = [qw] + [qw._replace(data=qw.data.clone(), scale=qw.scale.clone(),
                             offset=None if qw.offset is None else qw.offset.clone())
                 for _ in range(count - 1)]
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    out_n = n // 2 if gated else n
    res = torch.randn(rows, out_n, device="cuda", dtype=dtype)
    g = torch.rand(out_n, device="cuda", dtype=dtype) + 0.5
    parts = pending_norm_ref(torch.randn(rows, k, device="cuda", dtype=dtype), torch.ones(
        k, device="cuda", dtype=dtype), 32, MAX_ROWS).parts
    if mode == "rope":
        hq, hkv, d = heads
        pos = torch.arange(rows, device="cuda")
        cs = torch.rand(4096, d, device="cuda")
        kv = torch.zeros(2, 64, 16, hkv, d, device="cuda", dtype=dtype)
        extra = (pos, cs, kv, pos, hq, hkv)
        cuda = [lambda w=w: int4_gemv_qkv_rope(x, w, None, *extra, norm_parts=parts, eps=1e-5)
                for w in ws]
        triton = [lambda w=w: skinny_qkv_rope(x, w, None, *extra, norm_parts=parts, eps=1e-5)
                  for w in ws]
        ref = skinny_qkv_rope(x, qw, None, *extra, norm_parts=parts, eps=1e-5)
        got = lambda: int4_gemv_qkv_rope(x, qw, None, *extra, norm_parts=parts, eps=1e-5)  # noqa: E731
    elif mode == "add_norm":
        cuda = [lambda w=w: int4_gemv_add_norm(x, w, None, res, g) for w in ws]
        triton = [lambda w=w: skinny_gemm_add_norm(x, w, None, res, g) for w in ws]
        ref = res + skinny_gemm_ref(x, qw)
        got = lambda: int4_gemv_add_norm(x, qw, None, res, g).residual  # noqa: E731
    else:
        extra = dict(norm_parts=parts, eps=1e-5) if gated else {}
        cuda = [lambda w=w: int4_gemv(x, w, gated=gated, **extra) for w in ws]
        triton = [lambda w=w: skinny_gemm(x, w, gated=gated, **extra) for w in ws]
        ref = skinny_gemm(x, qw, gated=gated, **extra)  # the Triton kernel's, checked by its tests
        got = lambda: int4_gemv(x, qw, gated=gated, **extra)  # noqa: E731
    return cuda, triton, ref, got, weight_bytes(qw)


def rel_err(got, ref) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-9)).item()


@torch.inference_mode()
def sweep(models, rows_list, full: bool, kinds) -> list[dict]:
    out = []
    module.ENABLED_KINDS = set(kinds)
    for kind, model in [(kd, m) for kd in kinds for m in models]:
        for name, (n, k) in MODELS[model].items():
            mode = MODES[name]
            gated = mode == "gated"
            paired = mode in ("gated", "rope")  # two tiles a block: its config key
            for rows in rows_list:
                cuda, triton, ref, got, nbytes = case(n, k, mode, rows, HEADS[model], kind)
                t_triton = time_graph(triton)
                row = dict(kind=kind, model=model, product=name, mode=mode, rows=rows, n=n, k=k,
                           triton_us=t_triton, configs={})
                out_n = n // 2 if gated else n
                configs = grid(out_n, k, paired, kind) if full else []
                default = module.pick_config(out_n, k, paired, kind=kind)
                for cfg in [default] + [c for c in configs if c != default]:
                    module.CONFIG_OVERRIDES[(kind, out_n, k, paired)] = cfg
                    try:
                        err = rel_err(got(), ref)
                        us = time_graph(cuda)
                    except Exception as e:  # noqa: BLE001 (a config that fails to build)
                        print(f"  {name} {cfg}: {str(e)[:200]}", flush=True)
                        continue
                    finally:
                        module.CONFIG_OVERRIDES.clear()
                    row["configs"][str(tuple(cfg))] = dict(us=us, err=err)
                    print(f"{kind} {model} {name:8s} M={rows} {tuple(cfg)}: {us:7.2f} us "
                          f"({nbytes / us / 1e3:6.0f} GB/s, "
                          f"{nbytes / us / 1e6 / COPY_TBS:5.1%}) err {err:.1e}   "
                          f"triton {t_triton:7.2f} us", flush=True)
                row["default"] = str(tuple(default))
                row["bytes"] = nbytes
                out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="8b")
    ap.add_argument("--rows", default="1")
    ap.add_argument("--quick", action="store_true", help="the default configs only")
    ap.add_argument("--kinds", default="int4", help="int4,int8,fp8 (int8 / fp8: per row)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows = sweep(a.models.split(","), [int(r) for r in a.rows.split(",")], not a.quick,
                 a.kinds.split(","))
    print("\n| kind | model | product | M | triton us | cuda default us | best config | best us | best GB/s | err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = min(r["configs"].items(), key=lambda kv: kv[1]["us"])
        d = r["configs"].get(r["default"], {}).get("us", float("nan"))
        print(f"| {r['kind']} | {r['model']} | {r['product']} | {r['rows']} | {r['triton_us']:.2f} | {d:.2f} "
              f"| {best[0]} | {best[1]['us']:.2f} | {r['bytes'] / best[1]['us'] / 1e3:.0f} "
              f"| {best[1]['err']:.1e} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
