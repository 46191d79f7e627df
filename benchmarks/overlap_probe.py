"""Can decode attention (memory-bound) run beside a mixed step's weight GEMMs
(compute-bound) on a second CUDA stream, and how much does it hide? One GPU.

A layer of a mixed throughput step, Llama-3-8B shape, bf16: the prefill rows' o, gate/up,
SiLU-and-mul and down GEMMs (`--prefill` rows) and the decode rows' attention (`--decode`
sequences at `--context` keys, the Triton paged kernel), each alone, one after the other
on one stream, and side by side on two streams (attention on the side stream), repeated
over `--layers` layers; the decode rows' own GEMMs, which splitting the step adds, are
timed too. The GEMMs take every SM unless some are kept from cuBLAS (`--carveouts`); with
`--persistent`, the attention then runs as a persistent kernel sized to the kept SMs (an
experiment, checked against the engine's kernel). One table last.

    python benchmarks/overlap_probe.py [--prefill 2048 --decode 512 --context 1024]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tessera.kernels.paged_decode_attention import attend_group, paged_decode_attention


@triton.jit
def _persistent_decode(q_ptr, kv_ptr, tables_ptr, seq_lens_ptr, out_ptr, scale, num_items,
                       stride_qb, stride_qh, stride_kvs, stride_kvb, stride_kvt, stride_kvh,
                       stride_tb, stride_ob, stride_oh, max_blocks, KV_HEADS: tl.constexpr,
                       GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr):
    """An experiment: the decode kernel's unsplit work, (sequence, KV head) items, walked
    by a fixed number of programs, so it stays on as many SMs as it is given."""
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < GROUP
    for item in range(tl.program_id(0), num_items, tl.num_programs(0)):
        seq = item // KV_HEADS
        kv_head = item % KV_HEADS
        seq_len = tl.load(seq_lens_ptr + seq)
        m, l, acc = attend_group(q_ptr, kv_ptr, tables_ptr, seq, kv_head, seq_len, 0,
                                 tl.cdiv(seq_len, TILE), 0, scale, stride_qb, stride_qh,
                                 stride_kvs, stride_kvb, stride_kvt, stride_kvh, stride_tb,
                                 max_blocks, GROUP, GROUP_PAD, HEAD_DIM, BLOCK_SIZE, TILE, "tf32")
        res = acc / tl.maximum(l, 1e-30)[:, None]
        heads = kv_head * GROUP + rows
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
                 res.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])

def persistent_decode(q, kv_cache, tables, lens, scale, programs: int) -> torch.Tensor:
    num_seqs, num_heads, head_dim = q.shape
    _, _, block_size, kv_heads, _ = kv_cache.shape
    out = torch.empty_like(q)
    group = num_heads // kv_heads
    _persistent_decode[(programs,)](
        q, kv_cache, tables, lens, out, scale, num_seqs * kv_heads, q.stride(0), q.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        tables.stride(0), out.stride(0), out.stride(1), tables.shape[1], KV_HEADS=kv_heads,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TILE=64)
    return out


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
    ap.add_argument("--persistent", type=int, default=0, metavar="PER_SM",
                    help="with a carve-out, run the attention as a persistent kernel of "
                         "PER_SM programs per kept SM (an experiment)")
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

    programs = [0]  # > 0: the persistent experiment with this many programs

    def attention(i):
        if programs[0]:
            return persistent_decode(q, caches[i], tables, lens, dim ** -0.5, programs[0])
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
        programs[0] = args.persistent * sms
        if programs[0]:
            ref = paged_decode_attention(q, caches[0], tables, lens, dim ** -0.5)
            assert torch.allclose(attention(0).float(), ref.float(), atol=2e-2, rtol=2e-2)
        attn_ms = time_ms(attention_only) / args.layers
        gemm_ms = time_ms(gemms_only) / args.layers
        serial_ms = time_ms(serial) / args.layers  # the baseline under the same carve-out
        both_ms = time_ms(overlapped) / args.layers
        rows.append((sms, gemm_ms, attn_ms, serial_ms, both_ms))
    programs[0] = 0
    if carve is not None:
        carve(None)
    print(f"\n{torch.cuda.get_device_name()}: {args.prefill} prefill rows, {args.decode} "
          f"decode rows at {args.context} keys, ms per layer "
          f"({torch.backends.cuda.preferred_blas_library()})")
    for name, ms in res.items():
        print(f"{name:>20} {ms:8.3f}")
    print(f"{'SMs kept from cuBLAS':>20} {'GEMMs':>8} {'TFLOP/s':>8} {'attention':>10} "
          f"{'one stream':>11} {'two streams':>12} {'attention hidden':>17}")
    for sms, gemm_ms, attn_ms, serial_ms, both_ms in rows:
        print(f"{sms:>20} {gemm_ms:8.3f} {flops / gemm_ms / 1e9:8.0f} {attn_ms:10.3f} "
              f"{serial_ms:11.3f} {both_ms:12.3f} {(serial_ms - both_ms) / attn_ms:17.0%}")


if __name__ == "__main__":
    main()
