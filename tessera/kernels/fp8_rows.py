"""Dynamic per-token fp8 quantization of activations, Triton: one kernel, not six ops.

Objects: `quantize_rows_fp8(x)` (the launcher) -> (e4m3 [M, K], float32 scales [M, 1]);
its PyTorch definition is quant/fp8.py's `quantize_rows_fp8_ref`. Each program owns one
row: a first pass over K takes max|x|, the scale is max / 448 (1 for a row of zeros), a
second pass stores x / scale saturated to +-448 in e4m3. Rows up to ONE_PASS_MAX long are
held whole in registers and read once (64 rows of 14336 on the H200: 2.5 us); longer ones
are re-read from L2 (a decode step's activations are a few MB at most). Takes part in
PDL (kernels/pdl.py). Used before the fp8 x fp8 GEMMs (quant/fp8.py `w8a8_linear`), where
the unfused ops cost more than the GEMM saved.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args

FP8_MAX = 448.0
ONE_PASS_MAX = 16384  # rows up to this long are read once, whole, by one program


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK_K: tl.constexpr,
                   ONE_PASS: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    if ONE_PASS:  # the whole row in registers: read once
        row_x = tl.load(x_ptr + row * stride_x + ks, mask=ks < K, other=0.0).to(tl.float32)
        peak = tl.max(tl.abs(row_x), axis=0)
        scale = tl.where(peak > 0, peak / 448.0, 1.0)
        tl.store(s_ptr + row, scale)
        q = tl.minimum(tl.maximum(row_x / scale, -448.0), 448.0)
        tl.store(q_ptr + row * stride_q + ks, q.to(q_ptr.dtype.element_ty), mask=ks < K)
    else:  # two passes: max|x|, then the quantized values (the row again, from L2)
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
            tl.store(q_ptr + row * stride_q + k0 + ks, q.to(q_ptr.dtype.element_ty),
                     mask=k0 + ks < K)


def quantize_rows_fp8(x: torch.Tensor, pdl: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 [M, 1]): each row scaled to +-448."""
    launch = pdl_launch_args(x.device, pdl)
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m:
        whole = triton.next_power_of_2(k)
        if whole <= ONE_PASS_MAX:  # read once: 8-32 elements a thread
            _quantize_rows[(m,)](x, q, scale, k, x.stride(0), q.stride(0), BLOCK_K=whole,
                                 ONE_PASS=True, num_warps=max(4, min(16, whole // 1024)),
                                 **launch)
        else:
            _quantize_rows[(m,)](x, q, scale, k, x.stride(0), q.stride(0), BLOCK_K=1024,
                                 ONE_PASS=False, num_warps=4, **launch)
    return q, scale
