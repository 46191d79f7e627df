"""Split-K for the skinny decode GEMM (kernels/skinny_gemm.py) and the fp8 GEMM of few rows
(kernels/fp8_gemm.py): several programs share one
panel's K, and the last of them to finish adds their partial sums and runs the epilogue.

Why: a decode step has few output rows a program (a warp's MMA tile is 16 rows of W), so
at N = 4096 the 32-row panels of a quantized W make 128 programs of 2 warps: two warps
an SM of an H200's 132, too few to keep its memory busy while they also widen the
weights. Splitting K in S parts makes S times as many programs, each of 1/S of K.

How (the "serial fix-up" of stream-K GEMMs, one counter a panel): each program stores its
float32 partial sums [BLOCK_N, BLOCK_M] (and its second panel's: gated, rope) in a
workspace [panels, S, 2, BLOCK_N, BLOCK_M], then, after a barrier, adds one to its
panel's counter (acq_rel, GPU scope). The program that finds S - 1 there is the last: it
loads the S partials in the order of their K ranges (so the sum is the same whatever
order the programs finish in), puts the counter back to 0 and runs the epilogue; the
others end. Per-row scales (int8, fp8) are applied before the store: the sum is linear.

Counters: one zeroed int32 buffer a device (`counters`, MAX_PANELS long), every counter
back at 0 after each product, so the next product (or a CUDA graph's replay) finds them
so. Products use them one at a time: on one stream, and under PDL a kernel touches them
only after its wait, when the kernel before it has finished. (Two streams running skinny
products at once would need a buffer each.)

Objects: jit `reduce_partials`; host `counters(device)`, `k_per_split(k, block_k, split)`
(columns each program takes: whole steps), `splits(k, k_per)` (programs that get any),
`workspace(panels, split, block_n, device, block_m)`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.kernels.skinny_config import MAX_ROWS

MAX_PANELS = 1 << 16  # counters a device: more panels than any product here has
_COUNTERS: dict = {}


@triton.jit
def reduce_partials(acc, acc2, work_ptr, count_ptr, pid, pid_k, TWO: tl.constexpr,
                    SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Store this program's partials acc (acc2) [BLOCK_N, BLOCK_M] as split pid_k of panel
    pid, count it in, and -> (sum over the splits, its second panel's, last): the sums
    are complete only where last (this program arrived last; it resets the counter)."""
    offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    panel = work_ptr + pid.to(tl.int64) * (SPLIT * 2 * BLOCK_N * BLOCK_M)
    mine = panel + pid_k * (2 * BLOCK_N * BLOCK_M)
    tl.store(mine + offs, acc)
    if TWO:
        tl.store(mine + BLOCK_N * BLOCK_M + offs, acc2)
    tl.debug_barrier()  # every thread's partials are written before the count goes up
    arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu")
    tl.debug_barrier()
    last = arrived == SPLIT - 1
    if last:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        acc2 = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for s in tl.static_range(SPLIT):  # in K order: the same sum whoever came last
            part = panel + s * (2 * BLOCK_N * BLOCK_M)
            acc += tl.load(part + offs, cache_modifier=".cg")
            if TWO:
                acc2 += tl.load(part + BLOCK_N * BLOCK_M + offs, cache_modifier=".cg")
        tl.atomic_xchg(count_ptr + pid, 0, sem="relaxed", scope="gpu")
    return acc, acc2, last


def counters(device: torch.device) -> torch.Tensor:
    """The device's zeroed counters [MAX_PANELS] int32 (made on first use)."""
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is None:
        buf = _COUNTERS[key] = torch.zeros(MAX_PANELS, dtype=torch.int32, device=device)
    return buf


def k_per_split(k: int, block_k: int, split: int) -> int:
    """Columns of K each of `split` programs takes: whole steps of block_k (the last
    program takes what is left)."""
    return triton.cdiv(triton.cdiv(k, block_k), max(split, 1)) * block_k


def splits(k: int, k_per: int) -> int:
    """Programs along K that get any columns, k_per each."""
    return max(triton.cdiv(k, k_per), 1)


def workspace(panels: int, split: int, block_n: int, device: torch.device,
              block_m: int = MAX_ROWS) -> torch.Tensor:
    """Room for every program's partial sums: [panels, split, 2, block_n, block_m] fp32."""
    if panels > MAX_PANELS:
        raise ValueError(f"split-K has counters for {MAX_PANELS} panels, not {panels}")
    return torch.empty(panels * split * 2 * block_n * block_m, dtype=torch.float32,
                       device=device)
