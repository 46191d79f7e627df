"""The Llama-3-8B decode products at one row, each launched once after a warm-up: a target
for Nsight Compute (ncu), which reads the hardware counters of each launch.

For each kind asked (none = bf16, int8, fp8, int4) and each product (qkv, o, gate_up
gated, down; plain skinny_gemm with its default config, so the same tiles and K split as
the model's fused modes), a warm-up launch (Triton compiles), then, after all warm-ups,
one timed launch each in the same order. With `--launches`, it prints how many skinny
launches the warm-up makes (ncu's --launch-skip) and how many are profiled after it:

    skip=$(python benchmarks/kernels/ncu_products.py --launches --kinds int8,none)
    ncu --clock-control none --kernel-name regex:_skinny_gemm --launch-skip $skip \\
        --launch-count 8 --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --section SchedulerStats \\
        python benchmarks/kernels/ncu_products.py --kinds int8,none

The stall reasons behind "Warp Cycles Per Issued Instruction" (cycles a warp spends in each
state per instruction issued): add
`--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio`.
--slices S (--block-k C): int8 / fp8 in their default config with each step's columns
sliced among S warps (SkinnyConfig.slices).
Without ncu it prints each launch's time from CUDA events (one launch: a rough reading;
benchmarks/kernels/quant_gemm_sweep.py times properly).
"""
from __future__ import annotations

import argparse

import torch

from tessera.kernels.skinny_config import pick_config
from tessera.kernels.skinny_gemm import skinny_gemm
from tessera.quant.formats import quantize

HIDDEN, INTER, QKV = 4096, 14336, 6144
PRODUCTS = {"qkv": (QKV, HIDDEN, False), "o": (HIDDEN, HIDDEN, False),
            "gate_up": (2 * INTER, HIDDEN, True), "down": (HIDDEN, INTER, False)}


def weights(kind: str, n: int, k: int):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
    return w if kind == "none" else quantize(kind, w)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="int8,none")
    ap.add_argument("--products", default="qkv,o,gate_up,down")
    ap.add_argument("--slices", type=int, default=1,
                    help="int8 / fp8: the default config with K sliced among this many warps")
    ap.add_argument("--block-k", type=int, help="int8 / fp8 with --slices: the step's columns")
    ap.add_argument("--launches", action="store_true",
                    help="print the warm-up's number of skinny launches and exit")
    args = ap.parse_args()
    kinds, products = args.kinds.split(","), args.products.split(",")
    if args.launches:
        print(len(kinds) * len(products))
        return
    runs = []
    for kind in kinds:
        for name in products:
            n, k, gated = PRODUCTS[name]
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            cfg = None
            if args.slices > 1 and kind in ("int8", "fp8"):
                cfg = pick_config(n // 2 if gated else n, k, gated, 2, kind)
                cfg = cfg._replace(slices=args.slices, num_warps=args.slices,
                                   block_k=args.block_k or cfg.block_k)
            runs.append((f"{kind} {name}", x, weights(kind, n, k), gated, cfg))
    for _, x, w, gated, cfg in runs:  # warm-up: compiles
        skinny_gemm(x, w, gated=gated, config=cfg, pdl=False)
    torch.cuda.synchronize()
    for label, x, w, gated, cfg in runs:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        skinny_gemm(x, w, gated=gated, config=cfg, pdl=False)
        end.record()
        torch.cuda.synchronize()
        print(f"{label}: {start.elapsed_time(end) * 1e3:.1f} us", flush=True)


if __name__ == "__main__":
    main()
