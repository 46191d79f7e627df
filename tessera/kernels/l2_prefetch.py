"""Asking L2 for a weight's leading columns before a kernel's PDL wait (kernels/pdl.py),
Triton: what the skinny GEMM (kernels/skinny_gemm.py) and the fp8 decode GEMM
(kernels/fp8_gemm.py) do while the kernel before them still runs.

Objects: PREFETCH_BYTES (the budget, an A/B knob), host `line_columns(weight)` (columns
in a 128-byte line), `prefetch_columns(weight)` (how many leading columns of every row
to ask for), jit `prefetch_l2` (the requests, a line at a time). Measured on the H100
with the skinny GEMM, batch 1: 8 MiB 176.1 tok/s, 16-24 MiB 175.7, 32 MiB 173.4, 1024
columns whatever the size ~174.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PREFETCH_BYTES = 8 << 20  # under PDL: how much of W is asked of L2 before the wait


def line_columns(weight: torch.Tensor) -> int:
    """Columns of W in one 128-byte cache line."""
    return 128 // weight.element_size()


def prefetch_columns(weight: torch.Tensor) -> int:
    """Leading columns of every W row to prefetch: a power of two of whole 128-byte
    lines within PREFETCH_BYTES in all, or 0."""
    rows, k = weight.shape
    if rows == 0 or k == 0:
        return 0
    budget = min(PREFETCH_BYTES // (rows * weight.element_size()), triton.next_power_of_2(k))
    return 1 << (budget.bit_length() - 1) if budget >= line_columns(weight) else 0


@triton.jit
def prefetch_l2(w_ptr, w_rows, n_ok, K, PREFETCH_K: tl.constexpr, LINE: tl.constexpr):
    """Asks L2 for the first PREFETCH_K columns of these W rows, one 128-byte line (LINE
    columns) at a time; rows past N ask for W's first line instead."""
    cols = tl.arange(0, PREFETCH_K // LINE) * LINE
    ptrs = tl.where(n_ok[:, None] & (cols < K)[None, :], w_rows + cols[None, :], w_ptr)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l",
                              [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)
