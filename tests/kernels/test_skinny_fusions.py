"""The skinny GEMM's fusions against the unfused PyTorch ops: the q/k/v projection with
rotary embedding and the KV-cache write in its epilogue (`skinny_qkv_rope`: q, the cache's
slots in the model dtype and fp8, biases, head sizes smaller than a panel, MQA), and the
residual add + RMSNorm in its prologue (`norm=PreNorm(...)`: plain, gated and q/k/v, the
new residual bit for bit); bad shapes refused. CPU: interpreter in float32/float16; GPU:
bfloat16 too."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels.rms_norm import rms_norm_ref
from tessera.kernels.rotary_kv_write import rotary_kv_write_ref
from tessera.kernels.skinny_gemm import PreNorm, skinny_gemm, skinny_gemm_ref, skinny_qkv_rope
from tessera.layers.rotary import RotaryEmbedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
FP8 = torch.float8_e4m3fn


def rand(*shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def unfused(x, w, b, positions, cos_sin, cache, slots, num_q, num_kv):
    """skinny_gemm's reference, split into heads, then rotary + cache write's reference."""
    rows, head_dim = x.shape[0], cos_sin.shape[1]
    q, k, v = skinny_gemm_ref(x, w, b).split([num_q * head_dim, num_kv * head_dim,
                                              num_kv * head_dim], dim=-1)
    return rotary_kv_write_ref(q.view(rows, num_q, head_dim), k.view(rows, num_kv, head_dim),
                               v.view(rows, num_kv, head_dim), positions, cos_sin, cache, slots)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim,k,rows,bias", [
    ((4, 2), 16, 64, 3, False),  # half a head (8 dims) is smaller than a panel (16 rows)
    ((8, 2), 64, 96, 5, True),  # Qwen2-style biases
    ((4, 1), 128, 256, 1, False),  # MQA, Llama-3's head size, one token
    ((6, 2), 32, 64, 16, True)])  # the most rows
@pytest.mark.parametrize("cache_dtype", ["model", "fp8"])
def test_matches_the_unfused_ops(dtype, heads, head_dim, k, rows, bias, cache_dtype):
    num_q, num_kv = heads
    n = (num_q + 2 * num_kv) * head_dim
    x = rand(rows, k, dtype=dtype)
    w = rand(n, k, dtype=dtype, seed=1, scale=k ** -0.5)
    b = rand(n, dtype=dtype, seed=2) if bias else None
    rope = RotaryEmbedding(head_dim, 300, 10000.0).to(DEVICE)
    positions = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:rows].to(DEVICE)
    slots = torch.randperm(40, generator=torch.Generator().manual_seed(4))[:rows].to(DEVICE)
    cache = torch.zeros(2, 10, 4, num_kv, head_dim, dtype=dtype, device=DEVICE)
    if cache_dtype == "fp8":
        cache = cache.to(FP8)
    ref_cache = cache.clone()
    q = skinny_qkv_rope(x, w, b, positions, rope.cos_sin, cache, slots, num_q, num_kv)
    ref_q = unfused(x, w, b, positions, rope.cos_sin, ref_cache, slots, num_q, num_kv)
    tol = TOL[dtype]
    assert q.shape == (rows, num_q, head_dim)
    assert torch.allclose(q.float(), ref_q.float(), atol=tol, rtol=tol)
    got, want = cache.float(), ref_cache.float()
    if cache_dtype == "fp8":  # the GEMM's summation order may move a value one e4m3 step
        assert torch.allclose(got, want, rtol=0.13, atol=2 ** -9)
        assert (got != want).float().mean() < 0.05
    else:
        assert torch.allclose(got, want, atol=tol, rtol=tol)
    written = torch.zeros(40, dtype=torch.bool)
    written[slots.cpu()] = True
    assert (got.view(2, 40, num_kv, head_dim)[:, ~written.to(DEVICE)] == 0).all()


def test_refuses_weights_that_are_not_the_heads():
    x = rand(2, 64, dtype=torch.float32)
    rope = RotaryEmbedding(16, 32, 10000.0).to(DEVICE)
    cache = torch.zeros(2, 4, 4, 2, 16, device=DEVICE)
    pos = torch.zeros(2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="heads of 16"):
        skinny_qkv_rope(x, rand(100, 64, dtype=torch.float32), None, pos, rope.cos_sin, cache,
                        pos, 4, 2)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_qkv_rope(rand(17, 64, dtype=torch.float32), rand(128, 64, dtype=torch.float32),
                        None, pos, rope.cos_sin, cache, pos, 4, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,k,gated", [(1, 96, 64, False), (3, 128, 200, True),
                                            (4, 64, 256, False), (2, 192, 4096, True)])
def test_pre_norm_prologue_matches_add_then_norm_then_gemm(dtype, rows, n, k, gated):
    x, r = rand(rows, k, dtype=dtype), rand(rows, k, dtype=dtype, seed=1)
    g = rand(k, dtype=dtype, seed=2)
    w = rand(n, k, dtype=dtype, seed=3, scale=k ** -0.5)
    y, res = skinny_gemm(x, w, gated=gated, norm=PreNorm(r, g, 1e-5))
    normed, ref_res = rms_norm_ref(x, g, 1e-5, r)
    assert torch.equal(res, ref_res)  # the new residual: the same rounding of x + r
    ref = skinny_gemm_ref(normed, w, gated=gated)
    assert torch.allclose(y.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_pre_norm_with_qkv_rope(dtype):
    num_q, num_kv, head_dim, k, rows = 4, 2, 32, 128, 3
    x, r = rand(rows, k, dtype=dtype), rand(rows, k, dtype=dtype, seed=1)
    g = rand(k, dtype=dtype, seed=2)
    w = rand((num_q + 2 * num_kv) * head_dim, k, dtype=dtype, seed=3, scale=k ** -0.5)
    rope = RotaryEmbedding(head_dim, 64, 10000.0).to(DEVICE)
    positions = torch.tensor([5, 0, 63], device=DEVICE)
    slots = torch.tensor([7, 1, 30], device=DEVICE)
    cache = torch.zeros(2, 8, 4, num_kv, head_dim, dtype=dtype, device=DEVICE)
    ref_cache = cache.clone()
    q, res = skinny_qkv_rope(x, w, None, positions, rope.cos_sin, cache, slots, num_q, num_kv,
                             norm=PreNorm(r, g, 1e-6))
    normed, ref_res = rms_norm_ref(x, g, 1e-6, r)
    ref_q = unfused(normed, w, None, positions, rope.cos_sin, ref_cache, slots, num_q, num_kv)
    assert torch.equal(res, ref_res)
    tol = TOL[dtype]
    assert torch.allclose(q.float(), ref_q.float(), atol=tol, rtol=tol)
    assert torch.allclose(cache.float(), ref_cache.float(), atol=tol, rtol=tol)


def test_pre_norm_refuses_more_rows_than_its_prologue_takes():
    x = rand(5, 64, dtype=torch.float32)
    with pytest.raises(ValueError, match="at most 4 rows"):
        skinny_gemm(x, rand(32, 64, dtype=torch.float32),
                    norm=PreNorm(x, rand(64, dtype=torch.float32), 1e-5))
