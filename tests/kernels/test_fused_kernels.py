"""Fused residual-add + RMSNorm, SiLU-and-mul, and rotary + KV-cache write against their
PyTorch references (CPU: interpreter in float32/float16; GPU: bfloat16 too)."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels.reference import rms_norm_ref, rotary_kv_write_ref, silu_and_mul_ref
from tessera.kernels.rms_norm import rms_norm
from tessera.kernels.rotary_kv_write import rotary_kv_write
from tessera.kernels.silu_and_mul import silu_and_mul
from tessera.layers.rotary import RotaryEmbedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rand(*shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 576, 1000])
def test_rms_norm(dtype, hidden):
    x, r = rand(7, hidden, dtype=dtype), rand(7, hidden, dtype=dtype, seed=1)
    w = rand(hidden, dtype=dtype, seed=2)
    tol = TOL[dtype]
    assert torch.allclose(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), atol=tol, rtol=tol)
    out, res = rms_norm(x, w, 1e-5, r)
    ref_out, ref_res = rms_norm_ref(x, w, 1e-5, r)
    assert torch.equal(res, ref_res)  # the residual sum is the same rounding
    assert torch.allclose(out, ref_out, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 1536, 3000])
def test_silu_and_mul(dtype, d):
    x = rand(5, 2 * d, dtype=dtype)
    tol = TOL[dtype]
    assert torch.allclose(silu_and_mul(x), silu_and_mul_ref(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 2, 16), (9, 3, 64), (32, 8, 128)])
def test_rotary_kv_write(dtype, heads):
    num_q, num_kv, head_dim = heads
    tokens, num_blocks, bs = 6, 5, 4
    rope = RotaryEmbedding(head_dim, 256, 10000.0).to(DEVICE)
    qkv = rand(tokens, (num_q + 2 * num_kv) * head_dim, dtype=dtype)  # split views, as the model
    q, k, v = qkv.split([num_q * head_dim, num_kv * head_dim, num_kv * head_dim], dim=-1)
    q, k, v = (t.view(tokens, -1, head_dim) for t in (q, k, v))
    positions = torch.tensor([0, 3, 17, 100, 5, 255], device=DEVICE)
    slots = torch.tensor([0, 7, 2, 19, 12, 4], device=DEVICE)
    cache = torch.zeros(2, num_blocks, bs, num_kv, head_dim, dtype=dtype, device=DEVICE)
    ref_cache = cache.clone()
    got_q = rotary_kv_write(q, k, v, positions, rope.cos_sin, cache, slots)
    ref_q = rotary_kv_write_ref(q, k, v, positions, rope.cos_sin, ref_cache, slots)
    assert torch.equal(got_q, ref_q)  # each product and sum rounded as PyTorch rounds
    assert torch.equal(cache, ref_cache)
    untouched = torch.ones(num_blocks * bs, dtype=torch.bool)
    untouched[slots.cpu()] = False
    assert (cache[:, untouched.view(num_blocks, bs)] == 0).all()  # only the slots written
