"""Fused residual add + RMSNorm, Triton, one program per row; its definition is `rms_norm_ref`
(kernels/reference.py).

x, residual: [T, H]; weight: [H]. Without a residual: out = w * norm(x). With one:
s = x + residual (in the activations' dtype, as the unfused model adds), out = w *
norm(s), and s is returned as the new residual. The norm runs in float32 and is rounded
to the activations' dtype before the weight multiplies it (as HF transformers does).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args


@triton.jit
def _rms_norm(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
              HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
              USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        x = x + tl.load(res_ptr + row * n_cols + cols, mask=ok, other=0.0)
        tl.store(res_out_ptr + row * n_cols + cols, x, mask=ok)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)
    y = (xf * inv).to(x.dtype) * w
    tl.store(out_ptr + row * n_cols + cols, y, mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None, pdl: bool = True):
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else out
    _rms_norm[(rows,)](x, residual.contiguous() if residual is not None else x, weight, out,
                       res_out, cols, eps, HAS_RESIDUAL=residual is not None,
                       BLOCK=triton.next_power_of_2(cols), **pdl_launch_args(x.device, pdl))
    return out if residual is None else (out, res_out)
