"""Fused rotary embedding + KV-cache write, Triton; its definition is
`rotary_kv_write_ref` (kernels/reference.py).

One program per token: rotates its query heads (returned) and key heads ("rotate_half"
layout: first and second halves of each head pair up), then stores the rotated key and
the value at the token's cache slot. q: [T, Hq, D]; k, v: [T, Hkv, D]; positions,
slot_mapping: [T]; cos_sin: [max_pos, D] float32 (cos | sin); kv_cache:
[2, num_blocks, block_size, Hkv, D] in the activations' dtype or fp8 (stored saturated at
+-448, as quant/kv_cache.py does). Every product and sum is rounded to the activations'
dtype, as the unfused PyTorch ops (and HF transformers) round, so bf16 results match.
`rotate_pair`, `store_cast` and `rope_epilogue` also serve the skinny GEMM's q/k/v
epilogue (kernels/skinny_gemm.py: `skinny_qkv_rope`), which does the same in the
projection's launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera import envs
from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args


@triton.jit
def rotate_pair(x1, x2, cos, sin):
    """(x1 cos - x2 sin, x2 cos + x1 sin), each product and sum rounded to x's dtype."""
    dt = x1.dtype
    a1 = x1.to(tl.float32)
    a2 = x2.to(tl.float32)
    p1 = (a1 * cos).to(dt).to(tl.float32)
    p2 = (a2 * sin).to(dt).to(tl.float32)
    p3 = (a2 * cos).to(dt).to(tl.float32)
    p4 = (a1 * sin).to(dt).to(tl.float32)
    return (p1 - p2).to(dt), (p3 + p4).to(dt)


@triton.jit
def store_cast(dst, x, ok, SATURATE: tl.constexpr, PRE_ROUND: tl.constexpr):
    """x into dst's dtype. Into an fp8 (e4m3) cache: clamped to +-448 (no overflow; NaN
    stays NaN) and cast, which rounds to nearest-even on the GPU. Triton's interpreter
    rounds that cast wrongly (ties away from zero; -7.88 became -4), so under it
    (PRE_ROUND) the value is first rounded on e4m3's grid in float32: 4 significant bits
    by a Veltkamp split, steps of 2^-9 below 2^-6; the cast is then exact. (Not needed
    on the GPU, whose cast rounds to nearest-even itself.)"""
    if SATURATE:
        x = tl.clamp(x.to(tl.float32), -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
        if PRE_ROUND:
            t = x * 1048577.0  # 2^20 + 1
            x = tl.where(tl.abs(x) < 0.015625, (x + 24576.0) - 24576.0, t - (t - x))
    tl.store(dst, x.to(dst.dtype.element_ty), mask=ok)


@triton.jit
def _rotate_heads(src, dst, ok, cos, sin, HALF: tl.constexpr, SATURATE: tl.constexpr,
                  PRE_ROUND: tl.constexpr):
    """Loads the two halves of some heads at src [H, HALF] pointers, rotates them and
    stores them at dst."""
    r1, r2 = rotate_pair(tl.load(src, mask=ok, other=0.0), tl.load(src + HALF, mask=ok, other=0.0),
                     cos, sin)
    store_cast(dst, r1, ok, SATURATE, PRE_ROUND)
    store_cast(dst + HALF, r2, ok, SATURATE, PRE_ROUND)


@triton.jit
def rope_epilogue(x1, x2, head, dim, ok, ms, m_ok, q_ptr, stride_qm, pos_ptr, cs_ptr, slot_ptr,
                  kv_ptr, stride_kvs, NUM_Q: tl.constexpr, NUM_KV: tl.constexpr,
                  HALF: tl.constexpr, FP8_CACHE: tl.constexpr, PRE_ROUND: tl.constexpr):
    """A q/k/v projection's epilogue (kernels/skinny_gemm.py, rope mode): x1, x2 [N, M]
    are dims `dim` [N] of head `head` of M tokens and their partners HALF further, in the
    activations' dtype. Query heads are rotated into q [M, NUM_Q * 2 HALF]; key heads are
    rotated and, like value heads, stored at each token's cache slot. Same roundings as
    `_rotary_kv`."""
    pos = tl.load(pos_ptr + ms, mask=m_ok, other=0).to(tl.int64)  # [M]
    cs = cs_ptr + pos[None, :] * (2 * HALF) + dim[:, None]  # [N, M]
    dt = x1.dtype
    cos = tl.load(cs, mask=ok, other=0.0).to(dt).to(tl.float32)
    sin = tl.load(cs + HALF, mask=ok, other=0.0).to(dt).to(tl.float32)
    if head < NUM_Q:
        r1, r2 = rotate_pair(x1, x2, cos, sin)
        q_dst = q_ptr + ms[None, :] * stride_qm + (head * 2 * HALF + dim)[:, None]
        tl.store(q_dst, r1, mask=ok)
        tl.store(q_dst + HALF, r2, mask=ok)
    else:
        is_v = head >= NUM_Q + NUM_KV
        if not is_v:
            x1, x2 = rotate_pair(x1, x2, cos, sin)
        slot = tl.load(slot_ptr + ms, mask=m_ok, other=0).to(tl.int64)  # [M]
        kv_head = head - NUM_Q - is_v * NUM_KV
        kv_dst = (kv_ptr + is_v * stride_kvs + slot[None, :] * (NUM_KV * 2 * HALF)
                  + kv_head * 2 * HALF + dim[:, None])  # (names differ per branch: the
        store_cast(kv_dst, x1, ok, FP8_CACHE, PRE_ROUND)  # compiler types them apart)
        store_cast(kv_dst + HALF, x2, ok, FP8_CACHE, PRE_ROUND)


@triton.jit
def _rotary_kv(q_ptr, k_ptr, v_ptr, pos_ptr, slot_ptr, cs_ptr, q_out_ptr, kv_ptr,
               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_kvs,
               NUM_Q: tl.constexpr, NUM_KV: tl.constexpr, HALF: tl.constexpr,
               QH_PAD: tl.constexpr, KVH_PAD: tl.constexpr, FP8_CACHE: tl.constexpr,
               PRE_ROUND: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    half = tl.arange(0, HALF)
    cos = tl.load(cs_ptr + pos * 2 * HALF + half)[None, :]
    sin = tl.load(cs_ptr + pos * 2 * HALF + HALF + half)[None, :]
    dt = q_out_ptr.dtype.element_ty
    cos = cos.to(dt).to(tl.float32)
    sin = sin.to(dt).to(tl.float32)

    qh = tl.arange(0, QH_PAD)[:, None]
    qok = qh < NUM_Q
    qp = q_ptr + t * stride_qt + qh * stride_qh + half[None, :]
    qo = q_out_ptr + t * NUM_Q * 2 * HALF + qh * 2 * HALF + half[None, :]
    _rotate_heads(qp, qo, qok, cos, sin, HALF, False, False)

    kh = tl.arange(0, KVH_PAD)[:, None]
    kok = kh < NUM_KV
    kp = k_ptr + t * stride_kt + kh * stride_kh + half[None, :]
    dst = kv_ptr + slot * NUM_KV * 2 * HALF + kh * 2 * HALF + half[None, :]
    _rotate_heads(kp, dst, kok, cos, sin, HALF, FP8_CACHE, PRE_ROUND)
    vp = v_ptr + t * stride_vt + kh * stride_vh + half[None, :]
    store_cast(dst + stride_kvs, tl.load(vp, mask=kok, other=0.0), kok, FP8_CACHE, PRE_ROUND)
    store_cast(dst + stride_kvs + HALF, tl.load(vp + HALF, mask=kok, other=0.0), kok, FP8_CACHE,
           PRE_ROUND)


def cache_store_options(kv_cache: torch.Tensor) -> dict:
    """The constexprs of `store_cast` for this cache: FP8_CACHE (saturate into e4m3) and
    PRE_ROUND (under the interpreter, whose fp8 cast rounds wrongly)."""
    return dict(FP8_CACHE=kv_cache.dtype == torch.float8_e4m3fn,
                PRE_ROUND=envs.triton_interpreted())


def rotary_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, pdl: bool = True) -> torch.Tensor:
    tokens, num_q, head_dim = q.shape
    num_kv = k.shape[1]
    q_out = torch.empty(tokens, num_q, head_dim, dtype=q.dtype, device=q.device)
    if tokens == 0:
        return q_out
    assert q.stride(2) == k.stride(2) == v.stride(2) == 1 and kv_cache.is_contiguous()
    _rotary_kv[(tokens,)](
        q, k, v, positions, slot_mapping, cos_sin, q_out, kv_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), NUM_Q=num_q, NUM_KV=num_kv, HALF=head_dim // 2,
        QH_PAD=triton.next_power_of_2(num_q), KVH_PAD=triton.next_power_of_2(num_kv),
        **cache_store_options(kv_cache),
        enable_fp_fusion=False,  # no FMA: each product rounds, as PyTorch's ops round
        **pdl_launch_args(q.device, pdl))
    return q_out
