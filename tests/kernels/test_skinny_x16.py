"""The skinny GEMM's X16 mode (skinny_gemm.FP16_X; the prep in kernels/skinny_a8.py): an
int8 or fp8 W (per-row scales) times a bf16 x of at most X16_MAX_ROWS rows, each program
making its columns of x fp16 times a power of two, W widened to fp16. The product is the
widening path's (x exactly as it is), so the references are the plain ones: plain, bias,
gated, split along K, columns past one prep step, q/k/v with rotary and the cache write,
the residual add leaving a norm pending, a pending norm finished, the first step loaded
before the wait (QUANT_PRELOAD); x beyond fp16's range and in its subnormals; which
products take the mode.
CPU: Triton's interpreter (bf16 runs there in this mode: x is read as float32 and the
MMA is fp16's; its conversions to bf16 truncate, see `close`), but for the residual add,
whose bf16 loads come out wrong there (marked gpu); GPU: every test."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import skinny_gemm as sg
from tessera.kernels.norm_epilogue import pending_norm_ref
from tessera.kernels.skinny_config import MAX_ROWS, SkinnyConfig, pick_config
from tessera.kernels.skinny_gemm import (skinny_gemm, skinny_gemm_add_norm, skinny_gemm_ref,
                                         skinny_qkv_rope)
from tessera.quant.formats import quantize
from tests.kernels.test_skinny_qkv_rope import qkv_case, unfused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16
SPLIT3 = SkinnyConfig(block_n=32, block_k=64, num_warps=2, num_stages=2, split_k=3)
EPS = 1e-5
KINDS = ["int8", "fp8"]


@pytest.fixture(autouse=True)
def fp16_x(monkeypatch):
    monkeypatch.setattr(sg, "FP16_X", True)


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, BF16)


def weight(kind, n, k, seed=1):
    return quantize(kind, rand(n, k, seed=seed, scale=k ** -0.5), 0)


def close(got, ref, scale=1.0):
    """Within a few of bf16's steps of each value and of the largest (the sums' order
    differs; the interpreter also truncates each rounding to bf16, which the epilogues'
    several roundings compound: up to 1.6% of a gated output measured)."""
    got, ref = got.float(), ref.float()
    rtol = 2 ** -5 if DEVICE == "cpu" else 2 ** -7
    return bool(((got - ref).abs() <= rtol * ref.abs() + 2 ** -8 * scale * ref.abs().max()).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("config", [None, SPLIT3], ids=["own", "split3"])
@pytest.mark.parametrize("min_block_m", [16, 8])
def test_plain_bias_and_gated(kind, rows, config, min_block_m, monkeypatch):
    monkeypatch.setattr(sg, "QUANT_MIN_BLOCK_M", min_block_m)  # x's rows padded to 16 or 8
    n, k = 100, 448  # 100: no multiple of the 32-row panels; 448: 7 steps of 64
    x = rand(rows, k)
    qw, q2 = weight(kind, n, k), weight(kind, 2 * n, k, seed=3)
    assert sg.x_prep(x, sg.quant_args(qw)) == "fp16"
    b = rand(n, seed=2)
    assert close(skinny_gemm(x, qw, config=config), skinny_gemm_ref(x, qw))
    assert close(skinny_gemm(x, qw, b, config=config), skinny_gemm_ref(x, qw, b))
    got = skinny_gemm(x, q2, gated=True, config=config)
    assert got.shape == (rows, n)
    assert close(got, skinny_gemm_ref(x, q2, gated=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("magnitude", [2.0 ** 20, 2.0 ** -30])
def test_x_beyond_fp16s_range_and_in_its_subnormals(kind, magnitude):
    """x of 2^20 would be inf in fp16, x of 2^-30 its subnormals or 0: scaled by a power
    of two, each comes out as exactly as x of 1 (each split of SPLIT3 its own power)."""
    k, n = 448, 64
    x = rand(2, k, seed=4)
    qw = weight(kind, n, k)
    x[:, 192:384] *= 2.0 ** 8  # the second split: another power again
    for config in (None, SPLIT3):
        big = skinny_gemm(x * magnitude, qw, config=config)
        assert torch.isfinite(big.float()).all()
        assert close(big, skinny_gemm_ref(x * magnitude, qw))
        assert close(big.float() / magnitude, skinny_gemm(x, qw, config=config).float())


@pytest.mark.parametrize("rows", [1, 4])
def test_columns_past_one_prep_step_read_twice(rows):
    k, n = 4608, 32
    x = rand(rows, k, seed=9)
    qw = weight("fp8", n, k)
    whole = SkinnyConfig(block_n=32, block_k=256, num_warps=2, num_stages=2)
    for cfg in (whole, whole._replace(split_k=2)):
        assert close(skinny_gemm(x, qw, config=cfg), skinny_gemm_ref(x, qw))


def test_first_step_loaded_before_the_wait(monkeypatch):
    monkeypatch.setattr(sg, "QUANT_PRELOAD", True)
    x = rand(2, 512)
    for kind in KINDS:
        qw, q2 = weight(kind, 64, 512), weight(kind, 128, 512, seed=3)
        assert close(skinny_gemm(x, qw), skinny_gemm_ref(x, qw))
        assert close(skinny_gemm(x, q2, gated=True), skinny_gemm_ref(x, q2, gated=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("heads,head_dim,rows,bias", [
    ((2, 1), 128, 1, False),  # Llama-3's head size
    ((4, 2), 64, 3, True)])  # Qwen2-style biases
def test_qkv_rope_matches_the_unfused_ops(kind, heads, head_dim, rows, bias):
    num_q, num_kv = heads
    k = 384
    x = rand(rows, k)
    w, b, rope, positions, slots, kv = qkv_case(rows, k, num_q, num_kv, head_dim, BF16, bias)
    qw = quantize(kind, w, 0)
    ref_kv = kv.clone()
    q = skinny_qkv_rope(x, qw, b, positions, rope.cos_sin, kv, slots, num_q, num_kv)
    ref_q = unfused(x, qw, b, positions, rope.cos_sin, ref_kv, slots, num_q, num_kv)
    assert close(q, ref_q, scale=2.0)
    assert close(kv, ref_kv, scale=2.0)


@pytest.mark.gpu  # the interpreter's bf16 loads of the residual come out wrong
@pytest.mark.parametrize("kind", KINDS)
def test_add_norm_leaves_what_the_reference_does(kind):
    rows, n, k = 3, 128, 384
    x = rand(rows, k)
    qw = weight(kind, n, k)
    b, residual = rand(n, seed=2), rand(rows, n, seed=5)
    norm_w = 1 + 0.1 * rand(n, seed=6)
    got = skinny_gemm_add_norm(x, qw, b, residual, norm_w)
    block_n = pick_config(n, k, False, 2, kind).block_n
    ref = pending_norm_ref(residual + skinny_gemm_ref(x, qw, b), norm_w, block_n, MAX_ROWS)
    assert close(got.residual, ref.residual, scale=2.0)
    assert close(got.scaled, ref.scaled, scale=2.0)


@pytest.mark.parametrize("gated", [False, True])
def test_pending_norm_finished(gated):
    rows, k = 3, 384
    s = rand(rows, k, seed=5)
    pending = pending_norm_ref(s, torch.ones(k, dtype=BF16, device=DEVICE), 32, MAX_ROWS)
    r = torch.rsqrt(s.float().pow(2).mean(dim=1, keepdim=True) + EPS)
    n = 160 if gated else 80
    qw = weight("int8", n, k)
    got = skinny_gemm(pending.scaled, qw, gated=gated, norm_parts=pending.parts, eps=EPS)
    ref = skinny_gemm_ref((pending.scaled.float() * r).to(BF16), qw, gated=gated)
    assert close(got, ref, scale=2.0)


def test_which_products_take_it(monkeypatch):
    k, n = 256, 64
    qw = sg.quant_args(weight("fp8", n, k))
    x = rand(sg.X16_MAX_ROWS + 1, k)
    assert sg.x_prep(x[:sg.X16_MAX_ROWS], qw) == "fp16"
    assert sg.x_prep(x, qw) == ""  # more rows: widened to bf16 as before
    assert sg.x_prep(x[:1].half(), qw) == ""  # fp16 x: W widens to fp16 anyway
    grouped = sg.quant_args(quantize("int8", rand(n, k), 32))  # GGUF-style groups
    assert sg.x_prep(x[:1], grouped) == ""
    assert sg.x_prep(x[:1], sg.quant_args(quantize("int4", rand(n, k), 128))) == ""
    monkeypatch.setattr(sg, "FP8_ACTIVATIONS", True)  # fp8 activations come first
    assert sg.x_prep(x[:1], qw) == ("fp8" if sg.uses_a8(x[:1], qw) else "fp16")
    assert sg.x_prep(x[:1], sg.quant_args(weight("int8", n, k))) == "fp16"
    monkeypatch.setattr(sg, "FP8_ACTIVATIONS", False)
    monkeypatch.setattr(sg, "FP16_X", False)
    assert sg.x_prep(x[:1], qw) == ""
