"""The skinny GEMM's fp8-activation mode (kernels/skinny_a8.py, skinny_gemm.FP8_ACTIVATIONS):
an fp8 W times x quantized to e4m3 in the kernel, per row and per split of K, against the
widening path's references given x as the kernel multiplies it (`fake_quantize_splits`):
plain, bias, gated, split along K, q/k/v with rotary and the cache write, the residual add
leaving a norm pending, a pending norm finished; more rows than A8_MAX_ROWS widen as
before; the knob off changes nothing.
CPU (interpreter, float32 / float16): its e4m3 conversion rounds some values wrongly
(tests/kernels/test_fp8_rows.py), so x there is made of e4m3 values times a power of two
per row and split (each split's largest is +-448 of them), which quantize exactly; with
a different power in each split, one scale for the whole row would not give them back.
GPU: random x in bfloat16 too, within the fp8 MMA's accumulation (1e-2 of the largest
output, as tests/kernels/test_fp8_gemm.py)."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import skinny_gemm as sg
from tessera.kernels import split_k
from tessera.kernels.norm_epilogue import pending_norm_ref
from tessera.kernels.skinny_a8 import prep_width
from tessera.kernels.skinny_config import (QUANT_SMEM_BYTES, MAX_ROWS, SkinnyConfig,
                                           a8_config, shared_memory_bytes)
from tessera.kernels.skinny_gemm import (skinny_gemm, skinny_gemm_add_norm, skinny_gemm_ref,
                                         skinny_qkv_rope)
from tessera.quant.formats import quantize
from tessera.quant.fp8 import fake_quantize_splits
from tests.kernels.test_skinny_qkv_rope import qkv_case, unfused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# against the reference given x as the kernel sees it: the W rounding only on the CPU;
# on the GPU the fp8 MMA's own accumulation too
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
SPLIT3 = SkinnyConfig(block_n=64, block_k=64, num_warps=4, num_stages=2, split_k=3)
EPS = 1e-5


@pytest.fixture(autouse=True)
def fp8_activations(monkeypatch):
    monkeypatch.setattr(sg, "FP8_ACTIVATIONS", True)


def exact_x(rows, k, dtype, seed=0, chunk=64):
    """x [rows, k] that quantizes exactly: e4m3 values times 2^e, e per row and per
    `chunk` columns, each chunk's largest +-448 of them (on the GPU: random x)."""
    g = torch.Generator().manual_seed(seed)
    if DEVICE == "cuda":
        return torch.randn(rows, k, generator=g).to(DEVICE, dtype)
    q = (torch.randn(rows, k, generator=g) * 100).clamp(-448, 448)
    q = q.to(torch.float8_e4m3fn).float()
    q[:, ::chunk] = 448.0 * torch.sign(torch.randn(rows, (k + chunk - 1) // chunk, generator=g))
    powers = torch.randint(-10, -6, (rows, (k + chunk - 1) // chunk), generator=g)
    x = q * torch.exp2(powers.float()).repeat_interleave(chunk, dim=1)[:, :k]
    return x.to(DEVICE, dtype)


def fp8_weight(n, k, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return quantize("fp8", (torch.randn(n, k, generator=g) * k ** -0.5).to(DEVICE, dtype), 0)


def as_multiplied(x, n, qw, gated=False, config=None):
    """x as the kernel multiplies it (float32), for the config it takes."""
    cfg = config or a8_config(n, qw.in_features, gated)
    k = x.shape[1]
    return fake_quantize_splits(x, split_k.k_per_split(k, cfg.block_k, cfg.split_k))


def close(got, ref, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    if DEVICE == "cuda":  # the fp8 MMA adds in fewer bits than float32
        return (got.float() - ref.float()).abs().max() <= 1e-2 * ref.float().abs().max() + tol
    return torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("config", [None, SPLIT3], ids=["own", "split3"])
def test_plain_bias_and_gated(dtype, rows, config):
    n, k = 100, 448  # 100: no multiple of the 64-row panels; 448: 7 steps of 64
    x = exact_x(rows, k, dtype)
    qw, q2 = fp8_weight(n, k, dtype), fp8_weight(2 * n, k, dtype, seed=3)
    b = torch.randn(n, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    xm = as_multiplied(x, n, qw, config=config)
    assert close(skinny_gemm(x, qw, config=config), skinny_gemm_ref(xm, qw), dtype)
    assert close(skinny_gemm(x, qw, b, config=config), skinny_gemm_ref(xm, qw, b), dtype)
    xm = as_multiplied(x, n, q2, gated=True, config=config)
    got = skinny_gemm(x, q2, gated=True, config=config)
    assert got.shape == (rows, n)
    assert close(got, skinny_gemm_ref(xm, q2, gated=True), dtype, scale=2.0)


@pytest.mark.parametrize("rows", [1, 4])
def test_columns_past_one_prep_step_read_twice(rows):
    """A program's columns beyond one prep step (2048 at one row, 512 at four) are read
    twice (max|x|, then the values), split or not."""
    k, n = 4608, 64  # split in two: 2304 columns a program
    x = exact_x(rows, k, torch.float16, seed=9)
    qw = fp8_weight(n, k, torch.float16)
    whole = SkinnyConfig(block_n=64, block_k=256, num_warps=4, num_stages=2)
    for cfg in (whole, whole._replace(split_k=2)):
        assert split_k.k_per_split(k, cfg.block_k, cfg.split_k) > prep_width(rows)
        assert close(skinny_gemm(x, qw, config=cfg),
                     skinny_gemm_ref(as_multiplied(x, n, qw, config=cfg), qw), torch.float16)


def test_split_scales_are_their_own():
    """One scale for the whole row would not give back x's values where its splits differ
    in size by 2^16 (most of the small split would be e4m3's subnormals or 0): with W
    reading only that split, the kernel's result is the per-split one."""
    k, n = 448, 64
    x = exact_x(1, k, torch.float32, seed=7)
    x[:, 192:384] *= 2.0 ** -16  # SPLIT3's second split: columns [192, 384)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1)) * k ** -0.5
    w[:, :192] = 0.0
    w[:, 384:] = 0.0
    qw = quantize("fp8", w.to(DEVICE), 0)
    got = skinny_gemm(x, qw, config=SPLIT3)
    per_split = skinny_gemm_ref(as_multiplied(x, n, qw, config=SPLIT3), qw)
    whole_row = skinny_gemm_ref(fake_quantize_splits(x, k), qw)
    size = per_split.abs().max()
    assert (got - per_split).abs().max() <= (1e-2 if DEVICE == "cuda" else 1e-5) * size
    assert (got - whole_row).abs().max() > 0.1 * size


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim,rows,bias", [
    ((2, 1), 128, 1, False),  # Llama-3's head size: 64-row panels of one half each
    ((4, 2), 64, 3, True)])  # half a head (32) smaller than a panel, biases
def test_qkv_rope_matches_the_unfused_ops(dtype, heads, head_dim, rows, bias):
    num_q, num_kv = heads
    k = 384
    x = exact_x(rows, k, dtype)
    w, b, rope, positions, slots, kv = qkv_case(rows, k, num_q, num_kv, head_dim, dtype, bias)
    qw = quantize("fp8", w, 0)
    ref_kv = kv.clone()
    q = skinny_qkv_rope(x, qw, b, positions, rope.cos_sin, kv, slots, num_q, num_kv)
    xm = as_multiplied(x, qw.out_features, qw)
    ref_q = unfused(xm.to(dtype), qw, b, positions, rope.cos_sin,
                    ref_kv, slots, num_q, num_kv)
    assert close(q, ref_q, dtype, scale=2.0)
    assert close(kv, ref_kv, dtype, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,bias", [(1, False), (4, True)])
def test_add_norm_leaves_what_the_reference_does(dtype, rows, bias):
    n, k = 128, 384
    x = exact_x(rows, k, dtype)
    qw = fp8_weight(n, k, dtype)
    g = torch.Generator().manual_seed(2)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if bias else None
    residual = torch.randn(rows, n, generator=g).to(DEVICE, dtype)
    norm_w = (1 + 0.1 * torch.randn(n, generator=g)).to(DEVICE, dtype)
    got = skinny_gemm_add_norm(x, qw, b, residual, norm_w)
    product = skinny_gemm_ref(as_multiplied(x, n, qw), qw, b).to(dtype)
    ref = pending_norm_ref(residual + product, norm_w, a8_config(n, k).block_n, MAX_ROWS)
    assert close(got.residual, ref.residual, dtype, scale=2.0)
    assert close(got.scaled, ref.scaled, dtype, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gated", [False, True])
def test_pending_norm_finished(dtype, gated):
    """x is a pending norm's g * s (g of ones, so it quantizes as s does); its 1/rms is
    applied after the loop, with the activations' scales."""
    rows, k = 3, 384
    s = exact_x(rows, k, dtype, seed=5)
    ones = torch.ones(k, dtype=dtype, device=DEVICE)
    pending = pending_norm_ref(s, ones, 32, MAX_ROWS)
    r = torch.rsqrt(s.float().pow(2).mean(dim=1, keepdim=True) + EPS)
    n = 160 if gated else 80
    qw = fp8_weight(n, k, dtype)
    got = skinny_gemm(pending.scaled, qw, gated=gated, norm_parts=pending.parts, eps=EPS)
    xm = as_multiplied(pending.scaled, n // 2 if gated else n, qw, gated=gated) * r
    assert close(got, skinny_gemm_ref(xm, qw, gated=gated), dtype, scale=2.0)


def test_more_rows_widen_and_the_knob_off_changes_nothing(monkeypatch):
    k, n = 256, 64
    qw = fp8_weight(n, k, torch.float32)
    qa = sg.quant_args(qw)
    x = exact_x(sg.A8_MAX_ROWS + 1, k, torch.float32)
    assert not sg.uses_a8(x, qa) and sg.uses_a8(x[:1], qa)
    assert close(skinny_gemm(x, qw), skinny_gemm_ref(x, qw), torch.float32)
    monkeypatch.setattr(sg, "FP8_ACTIVATIONS", False)
    assert not sg.uses_a8(x[:1], qa)
    assert not sg.uses_a8(x[:1], sg.quant_args(quantize("int8", torch.randn(n, k), 0)))


def test_configs_fit_and_split_narrow_products():
    for n, k, gated in [(4096, 4096, False), (14336, 4096, True), (4096, 14336, False),
                        (6144, 4096, False), (100, 448, False)]:
        cfg = a8_config(n, k, gated)
        assert cfg.block_n == 64 and cfg.num_warps == 4  # a warpgroup's fp8 MMA tile
        assert shared_memory_bytes(cfg, gated, 1, 8) <= QUANT_SMEM_BYTES
        assert 32 <= cfg.block_k <= max(32, k)  # the fp8 MMA takes K in 32s
    assert a8_config(4096, 4096).split_k == 4  # 64 panels -> 256 programs (K: 4 steps each)
    assert a8_config(64, 16).block_k == 32
    assert a8_config(14336, 4096, True).split_k == 2
    assert prep_width(1) == 2048 and prep_width(3) == 512 and prep_width(16) == 128
