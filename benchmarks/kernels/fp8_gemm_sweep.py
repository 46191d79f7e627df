"""Check and time the fp8 x fp8 GEMM of few rows (kernels/fp8_gemm.py) on one GPU of compute
capability 8.9+, against torch._scaled_mm (cuBLASLt) and bf16 cuBLAS.

--check: odd and real shapes, with and without bias, split and not, against fp8_gemm_ref
(the float32 product of the same fp8 operands); exits 1 on a miss.
Timing: the Llama-3-8B and 70B projections (qkv, o, gate_up, down) at --rows, weights
rotating over copies that exceed L2, CUDA graphs; per product: bf16 cuBLAS (F.linear),
the activations' quantization (kernels/fp8_rows.py) alone, _scaled_mm alone, fp8_gemm
alone (the default config, and the best of a grid), and the whole W8A8 product as the
model runs it (quant/fp8.py w8a8_linear: quantization + fp8_gemm up to FEW_ROWS rows).
us per call and the weight bytes' GB/s; the JSON has every config.

    python benchmarks/kernels/fp8_gemm_sweep.py --check --out $OUT/fp8.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_gemm_sweep import MODELS, copies, timed  # noqa: E402

from tessera.kernels.fp8_gemm import Fp8GemmConfig, fp8_gemm, fp8_gemm_ref, pick_config  # noqa: E402
from tessera.kernels.fp8_rows import quantize_rows_fp8  # noqa: E402
from tessera.quant import fp8 as fp8_method  # noqa: E402
from tessera.quant.formats import quantize  # noqa: E402


def grid(m: int) -> list[Fp8GemmConfig]:
    bm = max(16, 1 << (m - 1).bit_length())
    return [Fp8GemmConfig(bm, bn, bk, w, st, sp)
            for bn, bk, w, st, sp in itertools.product((64, 128), (128, 256), (4,), (3, 4, 6),
                                                       (1, 2))
            if bn * bk * st + bm * bk * st <= 200_000]


@torch.inference_mode()
def check() -> list[dict]:
    out = []
    for m, n, k, bias, cfg in ((1, 100, 384, False, None), (17, 1000, 1024, True, None),
                               (64, 4096, 4096, False, None), (64, 4096, 4096, True,
                                                               Fp8GemmConfig(64, 64, 256, 4, 4, 4)),
                               (100, 6144, 4096, True, Fp8GemmConfig(128, 128, 128, 4, 3, 2)),
                               (33, 4096, 14336, False, Fp8GemmConfig(64, 64, 256, 4, 4, 8)),
                               (128, 28672, 4096, False, None)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
        qw = quantize("fp8", torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5)
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None
        xq, sx = quantize_rows_fp8(x)
        got = fp8_gemm(xq, sx, qw, b, config=cfg)
        ref = fp8_gemm_ref(xq, sx, qw, b)
        err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        again = fp8_gemm(xq, sx, qw, b, config=cfg)  # the counters are back at 0
        ok = err < 1e-2 and torch.equal(got, again)
        out.append(dict(case=f"m={m} n={n} k={k} bias={bias} {cfg}", rel_err=err, ok=ok))
        print(f"{'ok ' if ok else 'BAD'} {out[-1]['case']:70} rel err {err:.2e}", flush=True)
    return out


@torch.inference_mode()
def sweep(models: list[str], rows: list[int], full: bool) -> list[dict]:
    dt, res = torch.bfloat16, []
    for model in models:
        for name, (n, k) in MODELS[model].items():
            dense = [torch.randn(n, k, device="cuda", dtype=dt) / k ** 0.5
                     for _ in range(copies(n * k))]
            qws = [quantize("fp8", w) for w in dense]
            dense = dense[:copies(n * k * 2)]
            gb = n * k / 1e9
            for m in rows:
                x = torch.randn(m, k, device="cuda", dtype=dt)
                xq, sx = quantize_rows_fp8(x)
                r = dict(model=model, matrix=name, n=n, k=k, m=m)
                r["cublas_bf16"] = timed([lambda w=w: F.linear(x, w) for w in dense])
                r["quantize"] = timed([lambda: quantize_rows_fp8(x)])
                r["scaled_mm"] = timed([lambda qw=qw: torch._scaled_mm(
                    xq, qw.data.t(), scale_a=sx, scale_b=qw.scale.view(1, -1), out_dtype=dt)
                    for qw in qws])
                r["fp8_gemm"] = timed([lambda qw=qw: fp8_gemm(xq, sx, qw) for qw in qws])
                r["w8a8"] = timed([lambda qw=qw: fp8_method.w8a8_linear(x, qw) for qw in qws])
                r["default"] = list(pick_config(m, n, k))
                configs = []
                for cfg in (grid(m) if full else []):
                    configs.append([list(cfg), timed([lambda qw=qw, c=cfg: fp8_gemm(
                        xq, sx, qw, config=c) for qw in qws])])
                r["configs"] = configs
                best = min(configs, key=lambda c: (math.isnan(c[1]), c[1]), default=None)
                r["best"] = best
                res.append(r)
                bs = f"best {best[1]:6.1f} {best[0]}" if best else ""
                print(f"{model:3} {name:7} M={m:<4} bf16 {r['cublas_bf16']:6.1f} | quant "
                      f"{r['quantize']:5.1f} scaled_mm {r['scaled_mm']:6.1f} fp8_gemm "
                      f"{r['fp8_gemm']:6.1f} ({gb / r['fp8_gemm'] * 1e6:5.0f} GB/s) w8a8 "
                      f"{r['w8a8']:6.1f} | {bs}", flush=True)
            del dense, qws
            torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fp8_gemm.json")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--models", default="8b")
    ap.add_argument("--rows", default="32,64,128,256")
    ap.add_argument("--full", action="store_true", help="time a grid of configs too")
    args = ap.parse_args()
    out: dict = {"device": torch.cuda.get_device_name()}
    if args.check:
        out["check"] = check()
    out["sweep"] = sweep(args.models.split(","), [int(r) for r in args.rows.split(",")],
                         args.full)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    if args.check and not all(c["ok"] for c in out["check"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
