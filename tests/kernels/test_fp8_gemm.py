"""The fp8 x fp8 GEMM of few rows (kernels/fp8_gemm.py) against fp8_gemm_ref (the float32
product of the same e4m3 operands): masked and whole tiles, several row blocks and
128-row panels, with and without a bias, K whole and split in 2 and 3 (one split ending
inside a step; the counters back at zero, the result the same run after run), the
config rule, bad weights and layouts refused. CPU: the interpreter (operands quantized
by the PyTorch reference: the interpreter's own e4m3 rounding is wrong, test_fp8_rows.py),
outputs in float32 / float16; GPU (compute capability 8.9+; the error against the largest
output, the MMA summing in fewer bits than float32): bfloat16 too, the same result with
and without PDL, and the whole W8A8 product (quant/fp8.py w8a8_linear) on both sides of
FEW_ROWS."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import split_k
from tessera.kernels.fp8_gemm import (MANY_TILES, SMEM_BYTES, Fp8GemmConfig, fp8_gemm,
                                      fp8_gemm_ref, pick_config)
from tessera.quant import fp8 as fp8_method
from tessera.quant.formats import quantize
from tessera.quant.fp8 import quantize_rows_fp8_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP8_MMA = DEVICE == "cuda" and torch.cuda.get_device_capability() >= (8, 9)
OUT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# On the GPU the fp8 MMA sums in fewer bits than float32 (as cuBLASLt's fast accumulation):
# the error is measured against the largest output (H200: 3-7e-3 at K = 4096-14336)
GPU_REL_TOL = 1e-2

pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not FP8_MMA,
                                reason="fp8 tensor cores need compute capability 8.9+")


def operands(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 2
    xq, sx = quantize_rows_fp8_ref(x)
    qw = quantize("fp8", torch.randn(n, k, generator=g) / k ** 0.5)
    bias = torch.randn(n, generator=g)
    move = lambda t: t.to(DEVICE)  # noqa: E731
    qw = qw._replace(data=move(qw.data), scale=move(qw.scale))
    return move(xq), move(sx), qw, move(bias)


def close(got, ref, dtype):
    if DEVICE == "cuda":
        err = (got.float() - ref.float()).abs().max() / ref.float().abs().max()
        return err.item() <= GPU_REL_TOL
    return torch.allclose(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize("m,n,k,config", [
    (5, 100, 384, None),  # every tile masked
    (64, 128, 512, Fp8GemmConfig(64, 64, 128, 4, 2)),  # whole tiles, no masks
    (20, 96, 768, Fp8GemmConfig(32, 64, 128, 4, 2, 2)),  # K split in two
    (3, 64, 640, Fp8GemmConfig(16, 64, 128, 4, 2, 3)),  # in three, the last shorter
    (20, 64, 700, Fp8GemmConfig(32, 64, 128, 4, 2, 3)),  # ... and ending inside a step
    (150, 256, 512, Fp8GemmConfig(64, 128, 128, 4, 2)),  # three row blocks, 128-row panels
], ids=["masked", "whole", "split2", "split3", "split3-ragged", "row-blocks"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_fp8_gemm_matches_reference(dtype, m, n, k, config, with_bias):
    xq, sx, qw, bias = operands(m, n, k)
    b = bias.to(dtype) if with_bias else None
    got = fp8_gemm(xq, sx, qw, b, dtype, config=config)
    ref = fp8_gemm_ref(xq, sx, qw, b, dtype)
    assert got.shape == (m, n) and got.dtype == dtype
    assert close(got, ref, dtype)
    assert not torch.any(split_k.counters(torch.device(DEVICE)))  # back at zero
    assert torch.equal(fp8_gemm(xq, sx, qw, b, dtype, config=config), got)


def test_pick_config_rule():
    for m in (1, 17, 64, 100, 128):
        for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (512, 4096)):
            cfg = pick_config(m, n, k)
            assert cfg.block_m >= m and cfg.block_m in (16, 32, 64, 128)
            assert cfg.num_stages * (cfg.block_n + cfg.block_m) * cfg.block_k <= SMEM_BYTES
            tiles = -(-n // cfg.block_n) * -(-m // cfg.block_m)
            if m == 64:  # the sweep's rule at 64 rows: K whole, wide products shorter steps
                assert (cfg.split_k > 1) == (n == 512)  # only a narrow W is split
                assert cfg.block_k == (128 if tiles >= MANY_TILES else 256)


def test_pick_config_splits_only_narrow_or_long_products():
    assert pick_config(64, 512, 4096).split_k > 1  # 8 tiles: too few programs
    assert pick_config(128, 4096, 14336).split_k == 2  # the down product at 128 rows
    assert pick_config(128, 57344, 8192).split_k == 1  # many tiles: K whole
    assert pick_config(64, 4096, 14336).split_k == 1
    assert pick_config(128, 28672, 4096).block_n == 128


def test_fp8_gemm_refuses_other_weights():
    xq, sx, qw, _ = operands(4, 64, 256)
    with pytest.raises(ValueError, match="per-channel fp8"):
        fp8_gemm(xq, sx, quantize("int8", torch.randn(64, 256).to(DEVICE)))
    with pytest.raises(ValueError, match="columns"):
        fp8_gemm(xq[:, :128], sx, qw)
    with pytest.raises(ValueError, match="contiguous"):
        fp8_gemm(xq.t().contiguous().t(), sx, qw)


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_MMA, reason="fp8 tensor cores need compute capability 8.9+")
def test_fp8_gemm_same_with_and_without_pdl():
    """Under PDL (W prefetched before the wait, the next kernel let in after the loop) the
    result is the same as launched plainly, split K included, back to back."""
    xq, sx, qw, bias = operands(64, 4096, 4096)
    cfg = Fp8GemmConfig(64, 64, 256, 4, 4, 3)
    plain = [fp8_gemm(xq, sx, qw, bias.bfloat16(), config=cfg, pdl=False) for _ in range(2)]
    chained = [fp8_gemm(xq, sx, qw, bias.bfloat16(), config=cfg, pdl=True) for _ in range(2)]
    assert all(torch.equal(plain[0], y) for y in plain[1:] + chained)
    assert not torch.any(split_k.counters(torch.device(DEVICE)))


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_MMA, reason="W8A8 needs an NVIDIA GPU of compute capability 8.9+")
@pytest.mark.parametrize("rows", [17, 64, fp8_method.FEW_ROWS, fp8_method.FEW_ROWS + 1, 300])
def test_w8a8_linear_both_paths(rows):
    """The model's fp8 product: fp8_gemm up to FEW_ROWS rows, _scaled_mm above; both
    against the float32 reference of the same quantization."""
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 1024, generator=g) * 2).to(DEVICE, torch.bfloat16)
    qw = quantize("fp8", (torch.randn(768, 1024, generator=g) / 32).to(DEVICE, torch.bfloat16))
    bias = torch.randn(768, generator=g).to(DEVICE, torch.bfloat16)
    got = fp8_method.w8a8_linear(x, qw, bias)
    ref = fp8_method.w8a8_linear_ref(x, qw, bias)
    assert close(got, ref, torch.bfloat16)
