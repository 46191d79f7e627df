"""The q/k/v projection with rotary embedding and the KV-cache write in its epilogue
(`skinny_qkv_rope`) against the unfused PyTorch ops: q, the cache's slots (model dtype and
fp8), biases, head sizes smaller than a panel, MQA; bad shapes refused. CPU: interpreter
in float32/float16; GPU: bfloat16 too."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels.reference import rotary_kv_write_ref
from tessera.kernels.skinny_gemm import skinny_gemm_ref, skinny_qkv_rope
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


def qkv_case(rows, k, num_q, num_kv, head_dim, dtype, bias):
    """A q/k/v weight [(Hq + 2 Hkv) D, K] (and bias), a rotary table, distinct positions
    and cache slots for the rows, and a zeroed cache [2, 10 blocks, 4, Hkv, D]."""
    n = (num_q + 2 * num_kv) * head_dim
    w = rand(n, k, dtype=dtype, seed=1, scale=k ** -0.5)
    b = rand(n, dtype=dtype, seed=2) if bias else None
    rope = RotaryEmbedding(head_dim, 300, 10000.0).to(DEVICE)
    positions = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:rows].to(DEVICE)
    slots = torch.randperm(40, generator=torch.Generator().manual_seed(4))[:rows].to(DEVICE)
    cache = torch.zeros(2, 10, 4, num_kv, head_dim, dtype=dtype, device=DEVICE)
    return w, b, rope, positions, slots, cache


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim,k,rows,bias", [
    ((4, 2), 16, 64, 3, False),  # half a head (8 dims) is smaller than a panel (16 rows)
    ((8, 2), 64, 96, 5, True),  # Qwen2-style biases
    ((4, 1), 128, 256, 1, False),  # MQA, Llama-3's head size, one token
    ((6, 2), 32, 64, 16, True),  # the most rows
    ((3, 1), 96, 64, 2, False),  # half a head (48) over two panels, the second part-masked
    ((2, 1), 128, 8192, 2, False)])  # long rows: the K >= 8192 config
@pytest.mark.parametrize("cache_dtype", ["model", "fp8"])
def test_matches_the_unfused_ops(dtype, heads, head_dim, k, rows, bias, cache_dtype):
    num_q, num_kv = heads
    x = rand(rows, k, dtype=dtype)
    w, b, rope, positions, slots, cache = qkv_case(rows, k, num_q, num_kv, head_dim, dtype, bias)
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


def test_padding_rows_share_the_scratch_slot():
    """A CUDA graph's padding rows all write one scratch slot: the real rows' q and
    slots are as unfused, and the scratch slot holds the padding rows' value."""
    num_q, num_kv, head_dim, k = 4, 2, 32, 64
    x = rand(4, k, dtype=torch.float32)
    x[3] = x[2]  # padding rows repeat one input: on the GPU either store may land last
    w = rand((num_q + 2 * num_kv) * head_dim, k, dtype=torch.float32, seed=1, scale=k ** -0.5)
    rope = RotaryEmbedding(head_dim, 64, 10000.0).to(DEVICE)
    positions = torch.tensor([3, 9, 0, 0], device=DEVICE)
    slots = torch.tensor([5, 9, 0, 0], device=DEVICE)  # rows 2 and 3: padding, slot 0
    cache = torch.zeros(2, 4, 4, num_kv, head_dim, device=DEVICE)
    ref_cache = cache.clone()
    q = skinny_qkv_rope(x, w, None, positions, rope.cos_sin, cache, slots, num_q, num_kv)
    ref_q = unfused(x[:2], w, None, positions[:2], rope.cos_sin, ref_cache, slots[:2], num_q,
                    num_kv)
    tol = TOL[torch.float32]
    assert torch.allclose(q[:2], ref_q, atol=tol, rtol=tol)
    rows = cache.view(2, 16, num_kv, head_dim)
    ref_rows = ref_cache.view(2, 16, num_kv, head_dim)
    assert torch.allclose(rows[:, 1:], ref_rows[:, 1:], atol=tol, rtol=tol)
    pad = torch.zeros_like(ref_cache)
    unfused(x[2:], w, None, positions[2:], rope.cos_sin, pad, slots[2:3].repeat(2), num_q,
            num_kv)
    assert torch.allclose(rows[:, 0], pad.view(2, 16, num_kv, head_dim)[:, 0], atol=tol,
                          rtol=tol)


def test_refuses_weights_that_are_not_the_heads():
    x = rand(2, 64, dtype=torch.float32)
    rope = RotaryEmbedding(16, 32, 10000.0).to(DEVICE)
    cache = torch.zeros(2, 4, 4, 2, 16, device=DEVICE)
    pos = torch.zeros(2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="heads of 16"):
        skinny_qkv_rope(x, rand(100, 64, dtype=torch.float32), None, pos, rope.cos_sin, cache,
                        pos, 4, 2)
    with pytest.raises(ValueError, match="as many positions and slots"):
        skinny_qkv_rope(x, rand(128, 64, dtype=torch.float32), None, pos[:1], rope.cos_sin,
                        cache, pos, 4, 2)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_qkv_rope(rand(17, 64, dtype=torch.float32), rand(128, 64, dtype=torch.float32),
                        None, pos, rope.cos_sin, cache, pos, 4, 2)
