"""The RMSNorm split across two projections (kernels/norm_epilogue.py) against the unfused
ops: `skinny_gemm_add_norm` (residual add, g * s and the partial sums of s^2 in the
epilogue) and the projections that finish the norm (`skinny_gemm` plain and gated,
`skinny_qkv_rope`), alone and chained; bad parts refused. CPU: interpreter in
float32/float16; GPU: bfloat16 too."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tessera.kernels.norm_epilogue import pending_norm_ref
from tessera.kernels.reference import rms_norm_ref
from tessera.kernels.skinny_gemm import (MAX_ROWS, SkinnyConfig, pick_config, skinny_gemm,
                                         skinny_gemm_add_norm, skinny_gemm_ref, skinny_qkv_rope)
from tests.kernels.test_skinny_qkv_rope import qkv_case, unfused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SMALL = SkinnyConfig(block_n=32, block_k=64, num_warps=4, num_stages=2)
EPS = 1e-5


def rand(*shape, dtype, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(device=DEVICE, dtype=dtype)


def close(got, ref, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    return torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,k,bias", [(1, 96, 64, False), (3, 100, 200, True),
                                           (16, 64, 256, False), (2, 256, 8192, False)])
@pytest.mark.parametrize("config", [None, SMALL])
def test_add_norm_leaves_what_the_reference_does(dtype, rows, n, k, bias, config):
    x = rand(rows, k, dtype=dtype)
    w = rand(n, k, dtype=dtype, seed=1, scale=k ** -0.5)
    b = rand(n, dtype=dtype, seed=2) if bias else None
    residual = rand(rows, n, dtype=dtype, seed=3)
    g = rand(n, dtype=dtype, seed=4, scale=0.1, shift=1.0)
    got = skinny_gemm_add_norm(x, w, b, residual, g, config=config)
    block_n = (config or pick_config(n, k, False, x.element_size())).block_n
    ref = pending_norm_ref(residual + skinny_gemm_ref(x, w, b), g, block_n, MAX_ROWS)
    assert close(got.residual, ref.residual, dtype)
    assert close(got.scaled, ref.scaled, dtype)
    assert got.parts.shape == ref.parts.shape and got.parts.dtype == torch.float32
    assert torch.allclose(got.parts, ref.parts, rtol=TOL[dtype] * 2, atol=TOL[dtype])
    assert torch.all(got.parts[:, rows:] == 0)  # padding rows add nothing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,k,bias", [(1, 96, 64, False), (3, 100, 200, True),
                                           (16, 64, 256, False)])
@pytest.mark.parametrize("gated", [False, True])
def test_pending_norm_finished_by_the_next_projection(dtype, rows, n, k, bias, gated):
    s = rand(rows, k, dtype=dtype, seed=5, scale=3.0)
    g = rand(k, dtype=dtype, seed=4, scale=0.1, shift=1.0)
    pending = pending_norm_ref(s, g, 32, MAX_ROWS)
    w = rand(2 * n if gated else n, k, dtype=dtype, seed=1, scale=k ** -0.5)
    b = rand(n, dtype=dtype, seed=2) if bias and not gated else None
    got = skinny_gemm(pending.scaled, w, b, gated=gated, norm_parts=pending.parts, eps=EPS)
    ref = skinny_gemm_ref(rms_norm_ref(s, g, EPS), w, b, gated)
    assert close(got, ref, dtype, scale=2.0)  # g * s rounded once instead of twice


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim,k,rows,bias", [((4, 2), 16, 64, 3, False),
                                                        ((8, 2), 64, 96, 5, True),
                                                        ((4, 1), 128, 256, 1, False)])
def test_qkv_rope_finishes_a_pending_norm(dtype, heads, head_dim, k, rows, bias):
    num_q, num_kv = heads
    s = rand(rows, k, dtype=dtype, seed=5, scale=3.0)
    g = rand(k, dtype=dtype, seed=4, scale=0.1, shift=1.0)
    pending = pending_norm_ref(s, g, 64, MAX_ROWS)
    w, b, rope, positions, slots, cache = qkv_case(rows, k, num_q, num_kv, head_dim, dtype, bias)
    ref_cache = cache.clone()
    q = skinny_qkv_rope(pending.scaled, w, b, positions, rope.cos_sin, cache, slots, num_q,
                        num_kv, norm_parts=pending.parts, eps=EPS)
    ref_q = unfused(rms_norm_ref(s, g, EPS), w, b, positions, rope.cos_sin, ref_cache, slots,
                    num_q, num_kv)
    assert close(q, ref_q, dtype, scale=2.0)
    assert close(cache, ref_cache, dtype, scale=2.0)  # k, v in their slots; others still 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_layer_chain_equals_the_unfused_ops(dtype):
    """o (add + pending norm) -> gate/up (finishes it) -> down (add + pending norm) ->
    the next q/k/v-shaped product: the same as norms run as their own ops."""
    rows, hidden, inter = 4, 128, 192
    attn_out = rand(rows, hidden, dtype=dtype, seed=10)
    residual = rand(rows, hidden, dtype=dtype, seed=11, scale=2.0)
    o_w, up_w = (rand(hidden, hidden, dtype=dtype, seed=12, scale=hidden ** -0.5),
                 rand(2 * inter, hidden, dtype=dtype, seed=13, scale=hidden ** -0.5))
    down_w, next_w = (rand(hidden, inter, dtype=dtype, seed=14, scale=inter ** -0.5),
                      rand(96, hidden, dtype=dtype, seed=15, scale=hidden ** -0.5))
    g1, g2 = (rand(hidden, dtype=dtype, seed=s, scale=0.1, shift=1.0) for s in (16, 17))
    post = skinny_gemm_add_norm(attn_out, o_w, None, residual, g1)
    h = skinny_gemm(post.scaled, up_w, gated=True, norm_parts=post.parts, eps=EPS)
    nxt = skinny_gemm_add_norm(h, down_w, None, post.residual, g2)
    got = skinny_gemm(nxt.scaled, next_w, norm_parts=nxt.parts, eps=EPS)

    normed, res1 = rms_norm_ref(skinny_gemm_ref(attn_out, o_w), g1, EPS, residual)
    ref_h = skinny_gemm_ref(normed, up_w, gated=True)
    normed2, res2 = rms_norm_ref(skinny_gemm_ref(ref_h, down_w), g2, EPS, res1)
    assert close(nxt.residual, res2, dtype, scale=4.0)
    assert close(got, skinny_gemm_ref(normed2, next_w), dtype, scale=4.0)


def test_bad_parts_and_shapes_are_refused():
    x = rand(2, 64, dtype=torch.float32)
    w = rand(32, 64, dtype=torch.float32)
    with pytest.raises(ValueError, match="parts"):
        skinny_gemm(x, w, norm_parts=torch.zeros(2, 4, device=DEVICE))
    with pytest.raises(ValueError, match="parts"):
        skinny_gemm(x, w, norm_parts=torch.zeros(2, MAX_ROWS, device=DEVICE,
                                                  dtype=torch.float16))
    with pytest.raises(ValueError, match="residual must be"):
        skinny_gemm_add_norm(x, w, None, torch.zeros(2, 31, device=DEVICE),
                             torch.ones(32, device=DEVICE))
    with pytest.raises(ValueError, match="norm weight must be"):
        skinny_gemm_add_norm(x, w, None, torch.zeros(2, 32, device=DEVICE),
                             torch.ones(64, device=DEVICE))
    with pytest.raises(ValueError, match="residual must be"):
        skinny_gemm_add_norm(x, w, None, torch.zeros(2, 32, device=DEVICE, dtype=torch.float16),
                             torch.ones(32, device=DEVICE))
    with pytest.raises(ValueError, match="rows and columns"):
        skinny_gemm_add_norm(x, w[:0], None, torch.zeros(2, 0, device=DEVICE),
                             torch.ones(0, device=DEVICE))
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_gemm_add_norm(rand(17, 64, dtype=torch.float32), w, None,
                             torch.zeros(17, 32, device=DEVICE), torch.ones(32, device=DEVICE))


def test_norm_fusion_is_chosen_where_it_is_safe():
    """Where q/k/v takes rotary, except in float16 (g * s could overflow its range before
    the 1/rms scale) or when switched off."""
    from tessera.config import KernelConfig
    from tessera.layers.context import make_context

    def method(**switches):  # q/k/v's dense method, kernels on (as on CUDA)
        kernel = KernelConfig(skinny_gemm="always", kernel_backend="triton", **switches)
        return make_context(kernel, torch.device(DEVICE)).dense_method

    def layer(w):
        return SimpleNamespace(weight=w, bias=None)

    x32, w32 = rand(2, 64, dtype=torch.float32), rand(96, 64, dtype=torch.float32)
    x16, w16 = x32.half(), w32.half()
    on, off = method(), method(norm_fusion=False)
    assert on.fuses_norms(layer(w32), x32)
    assert on.fuses_rope(layer(w16), x16) and not on.fuses_norms(layer(w16), x16)
    assert off.fuses_rope(layer(w32), x32) and not off.fuses_norms(layer(w32), x32)
    assert not on.fuses_norms(layer(w32), rand(17, 64, dtype=torch.float32))  # not skinny
