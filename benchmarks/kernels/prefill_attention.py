"""Paged prefill attention alone: time and TFLOP/s on the throughput workload's shapes,
Llama-3-8B's heads (32 q, 8 KV, head 128), block size 16, bf16 (or an fp8 cache).

Cases: 8 whole prompts of 1024 tokens (a 8192-token step's prefill), 16 prompts of 128-1024
tokens, and a 2048-token chunk after a 2048-token cached prefix. FLOPs count only what the
causal mask keeps (4 x D x heads per query-key pair). --sweep tries tile sizes, warps
and pipeline stages (paged_prefill_attention.LAUNCH_OVERRIDES); best per case last.

    python benchmarks/kernels/prefill_attention.py [--sweep] [--kv-cache-dtype fp8]
"""
from __future__ import annotations

import argparse

import torch

from tessera.bench.offline import cuda_time_us
from tessera.kernels import paged_prefill_attention as ppa

SWEEP = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)
         for m in (64, 128) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)]
HEADS, KV_HEADS, DIM, BS = 32, 8, 128, 16


def case(prefixes: list[int], queries: list[int], cache_dtype: torch.dtype, dev):
    """Inputs of one step: sequence b has prefixes[b] cached tokens and queries[b] new."""
    lens = [p + n for p, n in zip(prefixes, queries)]
    max_blocks = -(-max(lens) // BS)
    tables = torch.randperm(len(lens) * max_blocks, device=dev).view(len(lens), max_blocks)
    cache = torch.randn(2, len(lens) * max_blocks, BS, KV_HEADS, DIM, device=dev,
                        dtype=torch.bfloat16).to(cache_dtype)
    q = torch.randn(sum(queries), HEADS, DIM, device=dev, dtype=torch.bfloat16)
    start = torch.tensor([0] + queries, device=dev).cumsum(0).to(torch.int32)
    args = (q, cache, tables.to(torch.int32), torch.tensor(lens, device=dev, dtype=torch.int32),
            start, max(queries), DIM ** -0.5)
    pairs = sum(n * p + n * (n + 1) // 2 for p, n in zip(prefixes, queries))
    return args, 4 * DIM * HEADS * pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--kv-cache-dtype", default="bf16", choices=("bf16", "fp8"))
    args = ap.parse_args()
    dev = torch.device("cuda")
    dtype = torch.float8_e4m3fn if args.kv_cache_dtype == "fp8" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    mixed = torch.randint(128, 1025, (16,), generator=g).tolist()
    cases = {"8 x 1024": ([0] * 8, [1024] * 8), "16 x 128-1024": ([0] * 16, mixed),
             "2048 after 2048": ([2048], [2048])}
    rows = []
    for name, (prefixes, queries) in cases.items():
        inputs, flops = case(prefixes, queries, dtype, dev)
        for cfg in [{}] + (SWEEP if args.sweep else []):
            ppa.LAUNCH_OVERRIDES = cfg
            try:
                us = cuda_time_us(lambda: ppa.paged_prefill_attention(*inputs), reps=20)
            except Exception as e:  # e.g. out of shared memory: say so, go on
                print(f"{name} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            finally:
                ppa.LAUNCH_OVERRIDES = {}
            rows.append((name, cfg, us, flops / us / 1e6))
    print(f"\n{torch.cuda.get_device_name()}, {args.kv_cache_dtype} cache")
    print(f"{'case':<18}{'us':>9}{'TFLOP/s':>9}  config")
    best: dict = {}
    for name, cfg, us, tflops in rows:
        if not cfg:
            print(f"{name:<18}{us:>9.1f}{tflops:>9.0f}  default")
        elif us < best.get(name, (float("inf"),))[0]:
            best[name] = (us, tflops, cfg)
    for name, (us, tflops, cfg) in best.items():
        print(f"{name:<18}{us:>9.1f}{tflops:>9.0f}  best: {cfg}")
    if args.sweep:  # every config, us per case, fastest in all first
        table: dict = {}
        for name, cfg, us, _ in rows:
            if cfg:
                table.setdefault(tuple(cfg.values()), []).append(us)
        print("us by config (block_m, block_n, warps, stages): " + " ".join(
            f"{cfg}: {'/'.join(f'{u:.0f}' for u in per)};"
            for cfg, per in sorted(table.items(), key=lambda r: sum(r[1]))[:15]))


if __name__ == "__main__":
    main()
