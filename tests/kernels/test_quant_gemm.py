"""The tiled quantized GEMM (`quant_gemm`, any number of rows) against quant_linear_ref:
int8, fp8, int4 in groups of 32 and 128 and grouped int8, with and without a bias, rows
and columns no multiple of the tiles, every row bound of the config table, whole tiles
(no masks), the config knob; bad shapes refused. CPU: interpreter in float32/float16;
GPU: bfloat16 too, and the PTX conversions equal to the plain casts bit for bit."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import quant_gemm as quant_gemm_module
from tessera.kernels import quant_tiles
from tessera.kernels.quant_gemm import QuantGemmConfig, pick_config, quant_gemm
from tessera.quant.formats import quant_linear_ref, quantize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# one rounding of the dequantized W to the dtype more than the float32 reference
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
KINDS = [("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128), ("int8", 32)]
IDS = [f"{k}{g or ''}" for k, g in KINDS]


def rand(*shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def quant(kind, group, n, k, dtype, seed=1):
    return quantize(kind, rand(n, k, dtype=dtype, seed=seed, scale=k ** -0.5), group)


def close(got, ref, dtype):
    tol = TOL[dtype]
    return torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,group", KINDS, ids=IDS)
@pytest.mark.parametrize("rows", [17, 64, 200])  # the table's first three bounds and past
def test_matches_the_reference(dtype, kind, group, rows):
    n, k = 100, 384 if group == 128 else 224  # no multiple of the tiles; K of the group
    x = rand(rows, k, dtype=dtype)
    qw = quant(kind, group, n, k, dtype)
    b = rand(n, dtype=dtype, seed=2)
    got = quant_gemm(x, qw)
    assert got.shape == (rows, n) and got.dtype == dtype
    assert close(got, quant_linear_ref(x, qw), dtype)
    assert close(quant_gemm(x, qw, b), quant_linear_ref(x, qw, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,group", KINDS, ids=IDS)
def test_whole_tiles_and_a_narrow_config(dtype, kind, group):
    """No masks on W (N and K whole tiles), and a config whose steps are narrower than
    a group (rounded up to whole groups) with a short group ordering."""
    x = rand(40, 256, dtype=dtype)
    qw = quant(kind, group, 128, 256, dtype)
    ref = quant_linear_ref(x, qw)
    assert close(quant_gemm(x, qw), ref, dtype)
    narrow = QuantGemmConfig(block_m=16, block_n=64, block_k=32, num_warps=4, num_stages=2,
                             group_m=2)
    assert close(quant_gemm(x, qw, config=narrow), ref, dtype)


def test_strided_rows_and_empty_shapes():
    x = rand(40, 128, dtype=torch.float32)[::2]  # rows 512 bytes apart, not contiguous
    qw = quant("int4", 32, 48, 64, torch.float32)
    assert close(quant_gemm(x[:, :64], qw), quant_linear_ref(x[:, :64], qw), torch.float32)
    assert quant_gemm(x[:0, :64], qw).shape == (0, 48)


def test_config_table_and_knob(monkeypatch):
    assert pick_config(17, "int8") == pick_config(32, "int8")
    assert pick_config(33, "int8").block_m == 64
    assert pick_config(5000, "int8") == quant_gemm_module.CONFIGS[-1][1]
    assert pick_config(5000, "int4", 32).block_k % 32 == 0
    assert pick_config(17, "int4", 256).block_k == 256  # at least one whole group
    wide = QuantGemmConfig(64, 64, 256, 4, 2)
    monkeypatch.setattr(quant_gemm_module, "CONFIG_OVERRIDES", {("int4", 64): wide})
    assert pick_config(50, "int4", 128) == wide
    assert pick_config(50, "int8") != wide
    for _, cfg in quant_gemm_module.CONFIGS:  # 16 rows of W a warp: none widens another's
        assert cfg.block_n >= 16 * cfg.num_warps


def test_bad_shapes_are_refused():
    x = rand(20, 64, dtype=torch.float32)
    qw = quant("int8", 0, 32, 64, torch.float32)
    with pytest.raises(ValueError, match="columns"):
        quant_gemm(x[:, :32], qw)
    with pytest.raises(ValueError, match="bias"):
        quant_gemm(x, qw, rand(31, dtype=torch.float32))
    with pytest.raises(ValueError, match="quantized GEMM"):
        quant_gemm(x, qw._replace(scale=qw.scale[:16]))


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="the PTX conversions run on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,group", KINDS, ids=IDS)
def test_ptx_conversions_equal_the_plain_casts(dtype, kind, group, monkeypatch):
    x = rand(300, 512, dtype=dtype)
    qw = quant(kind, group, 200, 512, dtype)
    fast = quant_gemm(x, qw)
    monkeypatch.setattr(quant_tiles, "FAST_DEQUANT", False)
    assert torch.equal(fast, quant_gemm(x, qw))
