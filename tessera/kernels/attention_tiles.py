"""Triton pieces shared by the paged attention kernels (decode and prefill).

`load_kv_tile`: the K and V of a tile of token positions of one sequence and KV head,
each token's page looked up in the block table -> k, v [N, D] in the cache's dtype (the
model's, or fp8, which `online_softmax_step` widens: to the queries' dtype, or, under
bf16 queries, to fp16 with the queries narrowed to fp16 too).
`online_softmax_step`: scores of the query rows against a key tile, masked, folded into
the running max `m` [M], sum `l` [M] and weighted values `acc` [M, D] (FlashAttention's
online softmax; a row with every key masked so far keeps m = -inf and l = 0).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(kv_ptr, tables_ptr, seq, pos, live, kv_head, dims, stride_tb, stride_kvs,
                 stride_kvb, stride_kvt, stride_kvh, max_blocks, BLOCK_SIZE: tl.constexpr):
    page = tl.minimum(pos // BLOCK_SIZE, max_blocks - 1)
    block = tl.load(tables_ptr + seq * stride_tb + page, mask=live, other=0).to(tl.int64)
    offs = (block[:, None] * stride_kvb + (pos % BLOCK_SIZE)[:, None] * stride_kvt
            + kv_head * stride_kvh + dims[None, :])
    k = tl.load(kv_ptr + offs, mask=live[:, None], other=0.0)  # [N, D]
    v = tl.load(kv_ptr + stride_kvs + offs, mask=live[:, None], other=0.0)
    return k, v


@triton.jit
def online_softmax_step(q, k, v, visible, m, l, acc, scale, PRECISION: tl.constexpr):
    if k.dtype == tl.float8e4nv and q.dtype == tl.bfloat16:  # (a literal test: static)
        # an fp8 cache under bf16 queries: both products in fp16, whose widening from e4m3
        # is one instruction per pair (bf16's took several, halving the kernel's speed).
        # e4m3 values are exact in fp16; queries are too from 2^-14 up to fp16's range,
        # where they are clamped (NaN stays NaN)
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0,
                     propagate_nan=tl.PropagateNan.ALL).to(tl.float16)
    k = k.to(q.dtype)  # an fp8 cache's values, widened exactly
    v = v.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale  # [M, N]
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    p = tl.exp(s - m_safe[:, None])
    pv = p.to(v.dtype)  # [M, N]: the probabilities that weigh the values
    if pv.dtype == tl.float16:  # fp16 rounds them and flushes those below 2^-24: the sum
        p = pv.to(tl.float32)  # counts exactly what the product uses
    l = l * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(pv, v, input_precision=PRECISION).to(tl.float32)
    return m_new, l, acc
