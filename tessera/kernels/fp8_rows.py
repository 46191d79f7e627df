"""Dynamic per-token fp8 quantization of activations, Triton: one kernel, not six ops.

Objects: `quantize_rows_fp8(x)` (the launcher) -> (e4m3 [M, K], float32 scales [M, 1]);
its PyTorch definition is quant/fp8.py's `quantize_rows_fp8_ref`. Each program owns one
row: a first pass over K takes max|x|, the scale is max / 448 (1 for a row of zeros), a
second pass stores x / scale saturated to +-448 in e4m3. The row is re-read from L2 (a
decode step's activations are a few MB at most). Used before the fp8 x fp8 GEMM
(quant/fp8.py `w8a8_linear`), where the unfused ops cost more than the GEMM saved.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    amax = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_x + k0 + ks, mask=k0 + ks < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    peak = tl.max(amax, axis=0)
    scale = tl.where(peak > 0, peak / 448.0, 1.0)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_x + k0 + ks, mask=k0 + ks < K, other=0.0)
        q = tl.minimum(tl.maximum(x.to(tl.float32) / scale, -448.0), 448.0)
        tl.store(q_ptr + row * stride_q + k0 + ks, q.to(q_ptr.dtype.element_ty), mask=k0 + ks < K)


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 [M, 1]): each row scaled to +-448."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m:
        block = min(1024, triton.next_power_of_2(k))
        _quantize_rows[(m,)](x, q, scale, k, x.stride(0), q.stride(0), BLOCK_K=block,
                             num_warps=4)
    return q, scale
