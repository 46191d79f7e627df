"""Where a MoE layer's decode time goes, and the grouped GEMM's tiles, on one GPU.

Mixtral-8x7B's expert shapes (8 experts, top 2, hidden 4096, expert width 14336), bf16,
random weights; for each batch: the routing (`route`), the alignment
(`align_by_expert`), the whole `fused_moe`, and each of its two GEMMs under every config
of a small sweep (CONFIGS: block_n, block_k, warps, stages), in us per call (CUDA graph of 20
calls, median of 5); the bytes the chosen experts' weights take over the time give the
read bandwidth. One table last; JSON to --out.

    python benchmarks/kernels/fused_moe_sweep.py --out $OUT/moe.json [--batches 1,32]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tessera.bench.offline import measure_bandwidth
from tessera.kernels import fused_moe as fm
from tessera.layers.moe import route

E, K_TOP, H, I = 8, 2, 4096, 14336
CONFIGS = [(64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3),
           (32, 128, 4, 4), (32, 256, 4, 3), (32, 256, 4, 4), (32, 512, 4, 3), (16, 256, 4, 4),
           (128, 128, 8, 3), (64, 128, 8, 4)]  # block_n, block_k, warps, stages


def graph_us(fn, reps: int = 20) -> float:
    """Median us per call of fn replayed in a CUDA graph."""
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="moe.json")
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args()
    dev = torch.device("cuda")
    bandwidth = measure_bandwidth(dev)
    w13 = torch.randn(E, 2 * I, H, device=dev, dtype=torch.bfloat16) * H ** -0.5
    w2 = torch.randn(E, H, I, device=dev, dtype=torch.bfloat16) * I ** -0.5
    configs = [fm.MoeConfig(*c) for c in CONFIGS]
    results = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M"),
               "bandwidth_tb_s": bandwidth / 1e12, "batches": {}}
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, H, device=dev, dtype=torch.bfloat16)
        logits = torch.randn(batch, E, device=dev)
        weights, ids = route(logits, K_TOP, True, x.dtype)
        experts = ids.unique().numel()
        assigned = batch * K_TOP
        block_m = fm.block_rows(assigned, E)
        sorted_ids, block_expert = fm.align_by_expert(ids, 0, E, block_m)
        act = torch.empty(assigned, I, device=dev, dtype=x.dtype)
        per = torch.zeros(assigned, H, device=dev, dtype=x.dtype)
        rw = weights.reshape(-1).contiguous()
        row = {"experts_used": experts,
               "route_us": graph_us(lambda: route(logits, K_TOP, True, x.dtype)),
               "align_us": graph_us(lambda: fm.align_by_expert(ids, 0, E, block_m)),
               "fused_moe_us": graph_us(lambda: fm.fused_moe(x, w13, w2, weights, ids)),
               "gemm1": [], "gemm2": []}
        bytes1, bytes2 = experts * 2 * I * H * 2, experts * H * I * 2
        for cfg in configs:
            for gated, key, nbytes in ((True, "gemm1", bytes1), (False, "gemm2", bytes2)):
                fm.CONFIG_OVERRIDES = {gated: cfg}
                try:
                    if gated:
                        us = graph_us(lambda: fm._gemm(x, w13, act, sorted_ids, block_expert,
                                                       act, I, K_TOP, True, False, block_m))
                    else:
                        us = graph_us(lambda: fm._gemm(act, w2, per, sorted_ids, block_expert,
                                                       rw, H, K_TOP, False, True, block_m))
                except Exception as e:  # out of shared memory: skip
                    print(f"{key} {cfg}: {type(e).__name__}", flush=True)
                    continue
                row[key].append({"config": list(cfg), "us": us,
                                 "tb_s": nbytes / us / 1e6})
        fm.CONFIG_OVERRIDES = {}
        for key in ("gemm1", "gemm2"):
            row[key].sort(key=lambda r: r["us"])
        results["batches"][batch] = row
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(f"\n{results['device']}, copy {results['bandwidth_tb_s']:.2f} TB/s")
    for batch, row in results["batches"].items():
        print(f"batch {batch} ({row['experts_used']} experts): route {row['route_us']:.1f} us, "
              f"align {row['align_us']:.1f} us, fused_moe {row['fused_moe_us']:.1f} us")
        block_m = fm.block_rows(int(batch) * K_TOP, E)
        for key, gated in (("gemm1", True), ("gemm2", False)):
            default = list(fm.TUNED[gated, 16 if block_m <= 16 else 64])
            d = next((r for r in row[key] if r["config"] == default), None)
            print(f"  {key}: default {d['us']:.1f} us ({d['tb_s']:.2f} TB/s)" if d else "")
            for r in row[key][:3]:
                print(f"    {r['config']}: {r['us']:.1f} us ({r['tb_s']:.2f} TB/s)")


if __name__ == "__main__":
    main()
