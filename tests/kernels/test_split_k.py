"""Split-K in the skinny GEMM (kernels/split_k.py): K shared by several programs, the last
adding the partials and running the epilogue. Every mode (plain with bias, gated, q/k/v +
rotary + KV write, residual add leaving a norm pending, a pending norm finished) on a
dense, an int8 and an int4 W, against the unfused references; the counters are back at
zero after every product; the result is the same on every run (the partials are added in
K order); a split larger than the steps uses fewer programs. CPU: the interpreter in
float16 (float32 for the plain product); GPU: bfloat16 too."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import skinny_gemm as skinny_module
from tessera.kernels import split_k
from tessera.kernels.norm_epilogue import pending_norm_ref
from tessera.kernels.reference import rms_norm_ref
from tessera.kernels.skinny_config import MAX_ROWS, SkinnyConfig
from tessera.kernels.skinny_gemm import (skinny_gemm, skinny_gemm_add_norm, skinny_gemm_ref,
                                         skinny_qkv_rope)
from tessera.quant.formats import quantize
from tests.kernels.test_skinny_qkv_rope import qkv_case, unfused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
KINDS = [("", 0), ("int8", 0), ("int4", 32)]
IDS = ["dense", "int8", "int4g32"]
K = 384  # six steps of 64: splits of 2 and 3 steps
EPS = 1e-5


def rand(*shape, dtype, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(device=DEVICE, dtype=dtype)


def weight(kind, group, n, dtype, seed=1):
    w = rand(n, K, dtype=dtype, seed=seed, scale=K ** -0.5)
    return quantize(kind, w, group) if kind else w


@pytest.fixture(params=[2, 3], ids=["split2", "split3"])
def split(request, monkeypatch):
    """Every product takes 64-wide steps in `split` programs along K."""
    def pick(*args, **kwargs):
        return SkinnyConfig(block_n=32, block_k=64, num_warps=2, num_stages=2,
                            split_k=request.param)
    monkeypatch.setattr(skinny_module, "pick_config", pick)
    return request.param


def counters_clear():
    return not torch.any(split_k.counters(torch.device(DEVICE)))


def close(got, ref, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    return torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32] + DTYPES)
@pytest.mark.parametrize("kind,group", KINDS, ids=IDS)
def test_plain_and_gated(split, dtype, kind, group):
    x = rand(3, K, dtype=dtype)
    w = weight(kind, group, 100, dtype)  # 100 rows: the last panel part-masked
    b = rand(100, dtype=dtype, seed=2)
    got = skinny_gemm(x, w, b)
    assert close(got, skinny_gemm_ref(x, w, b), dtype)
    assert counters_clear()
    assert torch.equal(skinny_gemm(x, w, b), got)  # the same sum whoever finishes last
    w2 = weight(kind, group, 160, dtype, seed=3)
    assert close(skinny_gemm(x, w2, gated=True), skinny_gemm_ref(x, w2, gated=True), dtype)
    assert counters_clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,group", KINDS, ids=IDS)
def test_qkv_rope(split, dtype, kind, group):
    x = rand(2, K, dtype=dtype)
    w, b, rope, positions, slots, kv = qkv_case(2, K, 4, 2, 64, dtype, True)
    w = quantize(kind, w, group) if kind else w
    ref_kv = kv.clone()
    q = skinny_qkv_rope(x, w, b, positions, rope.cos_sin, kv, slots, 4, 2)
    ref_q = unfused(x, w, b, positions, rope.cos_sin, ref_kv, slots, 4, 2)
    assert close(q, ref_q, dtype)
    assert close(kv, ref_kv, dtype)
    assert counters_clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,group", KINDS, ids=IDS)
def test_add_norm_then_norm_in(split, dtype, kind, group):
    rows, n = 3, 96
    x = rand(rows, K, dtype=dtype)
    w = weight(kind, group, n, dtype)
    residual = rand(rows, n, dtype=dtype, seed=3)
    g = rand(n, dtype=dtype, seed=4, scale=0.1, shift=1.0)
    got = skinny_gemm_add_norm(x, w, None, residual, g)
    ref = pending_norm_ref(residual + skinny_gemm_ref(x, w), g, 32, MAX_ROWS)
    assert close(got.residual, ref.residual, dtype)
    assert close(got.scaled, ref.scaled, dtype)
    assert torch.allclose(got.parts, ref.parts, rtol=TOL[dtype] * 2, atol=TOL[dtype])
    # the pending norm finished by the next (split) product
    s = rand(rows, K, dtype=dtype, seed=5, scale=3.0)
    gk = rand(K, dtype=dtype, seed=6, scale=0.1, shift=1.0)
    pending = pending_norm_ref(s, gk, 32, MAX_ROWS)
    w2 = weight(kind, group, 80, dtype, seed=7)
    out = skinny_gemm(pending.scaled, w2, norm_parts=pending.parts, eps=EPS)
    assert close(out, skinny_gemm_ref(rms_norm_ref(s, gk, EPS), w2), dtype, scale=2.0)
    assert counters_clear()


def test_split_past_the_steps_uses_fewer_programs():
    assert split_k.k_per_split(384, 64, 4) == 128  # 6 steps over 4: 2 each
    assert split_k.splits(384, 128) == 3  # so 3 programs get columns
    assert split_k.k_per_split(384, 64, 1) == 384
    assert split_k.splits(100, 128) == 1
    x = rand(2, K, dtype=torch.float16)
    w = weight("int8", 0, 64, torch.float16)
    cfg = SkinnyConfig(block_n=32, block_k=64, num_warps=2, num_stages=2, split_k=4)
    assert close(skinny_gemm(x, w, config=cfg), skinny_gemm_ref(x, w), torch.float16)
    assert counters_clear()
