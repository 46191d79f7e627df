"""Paged decode attention alone, bf16 vs fp8 (e4m3) KV cache: time per launch and the
KV bandwidth it reaches (bytes of K and V read / time), Llama-3-8B's heads (32 q, 8 KV,
head 128), block size 16, batches 64-512 at ~1k context. One table last.

    python benchmarks/decode_attention_kv.py [--context 1024]
"""
from __future__ import annotations

import argparse

import torch

from tessera.bench import measure_bandwidth
from tessera.kernels.paged_decode_attention import paged_decode_attention


def time_us(fn, reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=1024)
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
            us = time_us(lambda: paged_decode_attention(q, cache, tables, lens, dim ** -0.5))
            kv_bytes = 2 * batch * args.context * kv_heads * dim * cache.element_size()
            rows.append((batch, name, us, kv_bytes / us / 1e6))
    print(f"\n{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s, "
          f"context {args.context}")
    print(f"{'batch':>6}{'cache':>6}{'us':>9}{'KV TB/s':>9}{'of copy':>9}")
    for batch, name, us, tbs in rows:
        print(f"{batch:>6}{name:>6}{us:>9.1f}{tbs:>9.2f}{tbs * 1e12 / bandwidth:>9.0%}")


if __name__ == "__main__":
    main()
