"""The per-token fp8 quantization kernel against its PyTorch definition, on the GPU (in
float32, float16 and bfloat16): the same scales, and values within one e4m3 step (ties
may round apart). Not under the CPU interpreter: its e4m3 conversion is wrong just below
powers of two (-127 came out as -64, 2026-12-03, triton 3.x), and the kernel only runs
before the fp8 x fp8 GEMM, on GPUs of compute capability 8.9+."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels.fp8_rows import quantize_rows_fp8
from tessera.quant.fp8 import quantize_rows_fp8_ref

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 64), (5, 1500), (3, 2048), (2, 20000)])  # one pass; two
def test_quantize_rows_matches_reference(dtype, m, k):
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * 3).to(DEVICE, dtype)
    x[0, :7] = 0.0
    if m > 1:
        x[1] = 0.0  # a row of zeros: scale 1, values 0
    q, s = quantize_rows_fp8(x)
    q_ref, s_ref = quantize_rows_fp8_ref(x)
    assert torch.allclose(s, s_ref, rtol=1e-6)
    got, want = q.float() * s, q_ref.float() * s_ref
    assert torch.allclose(got, want, rtol=2 ** -3, atol=0)  # at most one e4m3 step apart
    assert (q.float().abs() <= 448).all()
    assert torch.allclose(got, x.float(), rtol=2 ** -3, atol=s.max().item() * 2 ** -9)
