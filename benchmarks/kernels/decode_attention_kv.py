"""Paged decode attention alone, bf16 vs fp8 (e4m3) KV cache: time per launch and the
KV bandwidth it reaches (bytes of K and V read / time), Llama-3-8B's heads (32 q, 8 KV,
head 128), block size 16, batches 64-512 at ~1k context. One table last.

    python benchmarks/kernels/decode_attention_kv.py [--context 1024] [--sweep]

--sweep: the same for each tile of keys x warps x pipeline stages of the partial kernel
(paged_decode_attention.LAUNCH_OVERRIDES), best per batch and cache last.
"""
from __future__ import annotations

import argparse

import torch

from tessera.bench.offline import cuda_time_us, measure_bandwidth
from tessera.kernels import paged_decode_attention as pda
from tessera.kernels.paged_decode_attention import paged_decode_attention

SWEEP = [dict(TILE=t, num_warps=w, num_stages=s)
         for t in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4, 5, 6, 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    bandwidth = measure_bandwidth(dev)
    heads, kv_heads, dim, bs = 32, 8, 128, 16
    rows = []
    for batch in (64, 256, 512):
        blocks = -(-args.context // bs)
        tables = torch.randperm(batch * blocks, device=dev).view(batch, blocks).to(torch.int32)
        lens = torch.full((batch,), args.context, dtype=torch.int32, device=dev)
        q = torch.randn(batch, heads, dim, device=dev, dtype=torch.bfloat16)
        for name in ("bf16", "fp8"):
            cache = torch.randn(2, batch * blocks, bs, kv_heads, dim, device=dev,
                                dtype=torch.bfloat16)
            if name == "fp8":
                cache = cache.to(torch.float8_e4m3fn)
            kv_bytes = 2 * batch * args.context * kv_heads * dim * cache.element_size()
            for cfg in [{}] + (SWEEP if args.sweep else []):
                pda.LAUNCH_OVERRIDES = cfg
                try:
                    us = cuda_time_us(lambda: paged_decode_attention(q, cache, tables, lens,
                                                                     dim ** -0.5))
                except Exception as e:  # e.g. out of shared memory: say so, go on
                    print(f"{batch} {name} {cfg}: {type(e).__name__}: {str(e)[:200]}",
                          flush=True)
                    continue
                finally:
                    pda.LAUNCH_OVERRIDES = {}
                rows.append((batch, name, us, kv_bytes / us / 1e6, cfg))
    print(f"\n{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s, "
          f"context {args.context}")
    print(f"{'batch':>6}{'cache':>6}{'us':>9}{'KV TB/s':>9}{'of copy':>9}  config")
    best: dict = {}
    for batch, name, us, tbs, cfg in rows:
        if not cfg:
            print(f"{batch:>6}{name:>6}{us:>9.1f}{tbs:>9.2f}{tbs * 1e12 / bandwidth:>9.0%}  default")
        elif us < best.get((batch, name), (float("inf"),))[0]:
            best[(batch, name)] = (us, tbs, cfg)
    for (batch, name), (us, tbs, cfg) in best.items():
        print(f"{batch:>6}{name:>6}{us:>9.1f}{tbs:>9.2f}{tbs * 1e12 / bandwidth:>9.0%}  best: {cfg}")
    if args.sweep:  # the runners-up too, as us per batch for each config
        table: dict = {}
        for batch, name, us, _, cfg in rows:
            table.setdefault((name, tuple(cfg.values())), {})[batch] = us
        print("us by config (tile, warps, stages): " + " ".join(
            f"{name} {cfg}: {'/'.join(f'{u:.0f}' for u in per.values())};"
            for (name, cfg), per in sorted(table.items(), key=lambda r: sum(r[1].values()))
            if cfg)[:3000])


if __name__ == "__main__":
    main()
