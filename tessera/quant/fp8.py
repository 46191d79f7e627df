"""FP8 W8A8: fp8 weights times fp8 activations on the tensor cores (compute capability 8.9+).

Objects: `w8a8_supported(device)`, `w8a8_fits(x, qw)`, `quantize_rows_fp8_ref(x)` (dynamic
per-token scales; kernels/fp8_rows.py computes them in one kernel),
`fake_quantize_activations(x, group)` (x quantized and back: the CPU's emulation),
`fake_quantize_splits(x, k_per)` (the same a split of K at a time: kernels/skinny_a8.py's x),
`w8a8_linear(x, qw, bias)` and `w8a8_linear_ref` (the same arithmetic in float32, the
test's oracle); FEW_ROWS.
Flow: x [M, K] -> per-row scale sx = max|x_row| / 448 and xq = x / sx in e4m3 [M, K];
y [M, N] = (xq @ Wq^T) * sx * sw (sw: the weight's per-channel scale [N]) (+ bias): up to
FEW_ROWS rows (decode batches) kernels/fp8_gemm.py, whose tiles keep the memory busy where
cuBLASLt's are too few (H200, Llama-3-8B products at 64 rows: 71 us a layer against 107),
above that torch._scaled_mm (cuBLASLt, row-wise scales in its epilogue). Used by
QuantizedLinearMethod (quant/quantized.py) for products of more than 16 rows; decode
steps of few rows stay weight-only (the skinny GEMM widens W in registers) unless
kernels/skinny_gemm.py's FP8_ACTIVATIONS knob is on: then up to A8_MAX_ROWS rows are
W8A8 too (kernels/skinny_a8.py: each program quantizes its split of x; widening costs
~4.2 instructions a weight on sm_90, the fp8 MMA ~0.95).
"""
from __future__ import annotations

from typing import Optional

import torch

from tessera.quant.formats import FP8_MAX, QuantizedWeight

FEW_ROWS = 128  # up to this many rows kernels/fp8_gemm.py, above _scaled_mm


def w8a8_supported(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
            and hasattr(torch, "_scaled_mm"))


def w8a8_fits(x: torch.Tensor, qw: QuantizedWeight) -> bool:
    """cuBLASLt's fp8 GEMM: dims multiples of 16, row-wise scales with a bf16 output."""
    return (qw.kind == "fp8" and x.dim() == 2 and x.dtype == torch.bfloat16
            and x.shape[1] % 16 == 0 and qw.out_features % 16 == 0 and x.shape[0] > 0)


def quantize_rows_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 scales [M, 1]): each row scaled to +-448 (the
    definition kernels/fp8_rows.py computes in one kernel)."""
    amax = x.abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    xq = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return xq, scale


def fake_quantize_activations(x: torch.Tensor, group: int = 0) -> torch.Tensor:
    """x [..., K] as W8A8 multiplies it: each row (group 0) or each group of `group`
    columns of a row scaled to +-448 in e4m3 (`quantize_rows_fp8_ref`) and scaled back, in
    x's dtype (the accuracy benchmark's emulation on devices without the fp8 MMA)."""
    k = x.shape[-1]
    if group < 0 or (group and k % group):
        raise ValueError(f"activation groups of {group} do not divide {k} columns")
    rows = x.reshape(-1, group or k)
    xq, sx = quantize_rows_fp8_ref(rows)
    return (xq.float() * sx).to(x.dtype).view_as(x)


def fake_quantize_splits(x: torch.Tensor, k_per: int) -> torch.Tensor:
    """x [M, K] as the skinny GEMM's fp8-activation mode multiplies it (kernels/skinny_a8.py):
    each k_per-column split of a row (the last may be shorter) scaled to +-448 in e4m3 and
    back -> float32 [M, K]. (The kernel multiplies by 448 / max|x| where this divides by
    max|x| / 448: the two may round a tie apart.)"""
    return torch.cat([fake_quantize_activations(part) for part in x.float().split(k_per, dim=1)],
                     dim=1)


def w8a8_linear(x: torch.Tensor, qw: QuantizedWeight,
                bias: Optional[torch.Tensor] = None, pdl: bool = True) -> torch.Tensor:
    """x [M, K] (bf16) @ W^T with fp8 operands -> [M, N] bf16 (pdl: kernels/pdl.py)."""
    from tessera.kernels.fp8_rows import quantize_rows_fp8
    xq, sx = quantize_rows_fp8(x.contiguous(), pdl=pdl)
    if x.shape[0] <= FEW_ROWS:
        from tessera.kernels.fp8_gemm import fp8_gemm
        return fp8_gemm(xq, sx, qw, bias, x.dtype, pdl=pdl)
    y = torch._scaled_mm(xq, qw.data.t(), scale_a=sx, scale_b=qw.scale.view(1, -1),
                         out_dtype=x.dtype)
    return y if bias is None else y + bias


def w8a8_linear_ref(x: torch.Tensor, qw: QuantizedWeight,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    xq, sx = quantize_rows_fp8_ref(x)
    y = (xq.float() @ qw.data.float().t()) * sx * qw.scale.float().view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
