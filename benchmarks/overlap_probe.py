"""Can decode attention (memory-bound) run beside a mixed step's weight GEMMs
(compute-bound) on a second CUDA stream, and how much does it hide? One GPU.

A layer of a mixed throughput step, Llama-3-8B shape, bf16: the prefill rows' o, gate/up,
SiLU-and-mul and down GEMMs (`--prefill` rows) and the decode rows' attention (`--decode`
sequences at `--context` keys, the Triton paged kernel), each alone, one after the other
on one stream, and side by side on two streams (attention on the side stream), repeated
over `--layers` layers; the decode rows' own GEMMs, which splitting the step adds, are
timed too. The GEMMs take every SM unless some are kept from cuBLAS (`--carveouts`).
One table last.

    python benchmarks/overlap_probe.py [--prefill 2048 --decode 512 --context 1024]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from tessera.kernels.paged_decode_attention import paged_decode_attention


def time_ms(fn, reps: int = 5) -> float:
    """Median ms of fn() over reps (after one warm-up), CUDA events on the current stream."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[reps // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=512)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--carveouts", default="0,16,32,48",
                    help="SMs kept from cuBLAS (torch._C._set_sm_carveout_experimental), so "
                         "the side stream's attention finds some free")
    ap.add_argument("--blas", default=None, choices=["cublas", "cublaslt"],
                    help="torch.backends.cuda.preferred_blas_library for the GEMMs")
    args = ap.parse_args()
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    dev, dt = torch.device("cuda"), torch.bfloat16
    hidden, inter, heads, kv_heads, dim, bs = 4096, 14336, 32, 8, 128, 16
    layers = [dict(o=torch.randn(hidden, hidden, device=dev, dtype=dt) * 0.01,
                   gate_up=torch.randn(2 * inter, hidden, device=dev, dtype=dt) * 0.01,
                   down=torch.randn(hidden, inter, device=dev, dtype=dt) * 0.01)
              for _ in range(args.layers)]
    blocks = -(-args.context // bs)
    caches = [torch.randn(2, args.decode * blocks, bs, kv_heads, dim, device=dev, dtype=dt)
              for _ in range(args.layers)]
    tables = torch.randperm(args.decode * blocks, device=dev).view(args.decode, blocks).int()
    lens = torch.full((args.decode,), args.context, dtype=torch.int32, device=dev)
    q = torch.randn(args.decode, heads, dim, device=dev, dtype=dt)
    x_pre = torch.randn(args.prefill, hidden, device=dev, dtype=dt)
    x_dec = torch.randn(args.decode, hidden, device=dev, dtype=dt)
    side = torch.cuda.Stream()

    def mlp(x, w):
        h = F.linear(x, w["o"])
        g, u = F.linear(h, w["gate_up"]).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, w["down"])

    def attention(i):
        return paged_decode_attention(q, caches[i], tables, lens, dim ** -0.5)

    def gemms_only():
        for w in layers:
            mlp(x_pre, w)

    def attention_only():
        for i in range(args.layers):
            attention(i)

    def decode_gemms_only():
        for w in layers:
            mlp(x_dec, w)

    def serial():
        for i, w in enumerate(layers):
            attention(i)
            mlp(x_pre, w)

    def overlapped():
        for i, w in enumerate(layers):
            ready = torch.cuda.Event()
            ready.record()
            side.wait_event(ready)
            with torch.cuda.stream(side):
                attention(i)
            done = torch.cuda.Event()
            done.record(side)
            mlp(x_pre, w)
            torch.cuda.current_stream().wait_event(done)

    res = {name: time_ms(fn) / args.layers for name, fn in
           [("decode attention", attention_only), ("decode rows' GEMMs", decode_gemms_only)]}
    flops = 2 * args.prefill * (hidden * hidden + 2 * inter * hidden + inter * hidden)
    carve = getattr(torch._C, "_set_sm_carveout_experimental", None)
    rows = []
    for sms in map(int, args.carveouts.split(",")):
        if sms and carve is None:
            continue
        if carve is not None:
            carve(sms or None)
        gemm_ms = time_ms(gemms_only) / args.layers
        serial_ms = time_ms(serial) / args.layers  # the baseline under the same carve-out
        both_ms = time_ms(overlapped) / args.layers
        rows.append((sms, gemm_ms, serial_ms, both_ms))
    if carve is not None:
        carve(None)
    print(f"\n{torch.cuda.get_device_name()}: {args.prefill} prefill rows, {args.decode} "
          f"decode rows at {args.context} keys, ms per layer "
          f"({torch.backends.cuda.preferred_blas_library()})")
    for name, ms in res.items():
        print(f"{name:>20} {ms:8.3f}")
    print(f"{'SMs kept from cuBLAS':>20} {'GEMMs':>8} {'TFLOP/s':>8} {'one stream':>11} "
          f"{'two streams':>12} {'attention hidden':>17}")
    for sms, gemm_ms, serial_ms, both_ms in rows:
        print(f"{sms:>20} {gemm_ms:8.3f} {flops / gemm_ms / 1e9:8.0f} {serial_ms:11.3f} "
              f"{both_ms:12.3f} {(serial_ms - both_ms) / res['decode attention']:17.0%}")


if __name__ == "__main__":
    main()
