"""Prefill / mixed-batch attention over ragged queries and a paged context, Triton
(FlashAttention-style online softmax, causal); `paged_prefill_attention_ref` beside it.

Shapes: q [T, Hq, D] (sequences' new tokens packed one after another); query_start
[B + 1] offsets into q; seq_lens [B] (context length after this step: the cached prefix
plus the new tokens); kv_cache [2, num_blocks, block_size, Hkv, D] (the new tokens' K/V
already written); block_tables [B, max_blocks] -> out [T, Hq, D].

One program per (query tile of BLOCK_M tokens, sequence, query head). Query j of
sequence b sits at position seq_len - query_len + j and sees keys 0..that position (and
no further back than the sliding window). Keys come in tiles of BLOCK_N tokens, each
token's page looked up in the block table.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from tessera.kernels.attention_tiles import load_kv_tile, online_softmax_step

# A/B knob (benchmarks/kernels/prefill_attention.py --sweep): tile sizes and launch
# options for long queries, e.g. {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8,
# "num_stages": 3}
LAUNCH_OVERRIDES: dict = {}


@triton.jit(do_not_specialize=["stride_tb", "max_blocks"])  # vary by step
def _prefill(q_ptr, kv_ptr, tables_ptr, seq_lens_ptr, qstart_ptr, out_ptr, scale, window,
             stride_qt, stride_qh, stride_ot, stride_oh, stride_kvs, stride_kvb, stride_kvt,
             stride_kvh, stride_tb, max_blocks,
             GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_begin = tl.load(qstart_ptr + seq)
    q_len = tl.load(qstart_ptr + seq + 1) - q_begin
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    first_pos = seq_len - q_len  # position of this sequence's first new token
    kv_head = head // GROUP
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    q_pos = first_pos + rows  # [M]
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + (q_begin + rows)[:, None] * stride_qt + head * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)  # [M, D]
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    last_key = tl.minimum(first_pos + (tile + 1) * BLOCK_M, seq_len)  # exclusive
    first_key = tl.maximum(first_pos + tile * BLOCK_M - window + 1, 0)
    start = (first_key // BLOCK_N) * BLOCK_N
    cols = tl.arange(0, BLOCK_N)
    for k_start in range(start, last_key, BLOCK_N):
        pos = k_start + cols  # [N]
        live = pos < last_key
        k, v = load_kv_tile(kv_ptr, tables_ptr, seq, pos, live, kv_head, dims, stride_tb,
                            stride_kvs, stride_kvb, stride_kvt, stride_kvh, max_blocks,
                            BLOCK_SIZE)  # [N, D] each
        visible = (live[None, :] & (pos[None, :] <= q_pos[:, None])
                   & (q_pos[:, None] - pos[None, :] < window))  # causal, within the window
        m, l, acc = online_softmax_step(q, k, v, visible, m, l, acc, scale, PRECISION)
    out = acc / tl.maximum(l, 1e-30)[:, None]
    tl.store(out_ptr + (q_begin + rows)[:, None] * stride_ot + head * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def launch_options(kv_cache: torch.Tensor, max_query_len: int) -> dict:
    """Tiles of 16 queries for short ones; else 64 queries, keys in tiles of 32 (64 from an
    fp8 cache) and 2 pipeline stages (`benchmarks/kernels/prefill_attention.py --sweep`,
    one H100: 8 prompts of 1024 tokens in 354 us against 411 with 64-key tiles and 3
    stages, bf16; fp8 375 against 418). LAUNCH_OVERRIDES last, for long queries."""
    if max_query_len <= 32:
        return dict(BLOCK_M=16, BLOCK_N=64)
    return {"BLOCK_M": 64, "BLOCK_N": 64 if kv_cache.dtype == torch.float8_e4m3fn else 32,
            "num_stages": 2, **LAUNCH_OVERRIDES}


def paged_prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                            seq_lens: torch.Tensor, query_start: torch.Tensor, max_query_len: int,
                            scale: float, sliding_window: Optional[int] = None,
                            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """-> out [T, Hq, D] (written into `out` if given: a view's rows do, its last dim contiguous)."""
    tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    if out is None:
        out = torch.empty_like(q)
    opts = launch_options(kv_cache, max_query_len)
    grid = (triton.cdiv(max_query_len, opts["BLOCK_M"]), block_tables.shape[0], num_heads)
    _prefill[grid](
        q, kv_cache, block_tables, seq_lens, query_start, out, scale,
        sliding_window if sliding_window is not None else 1 << 30,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), kv_cache.stride(0),
        kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3), block_tables.stride(0),
        block_tables.shape[1], GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **opts)
    return out


def paged_prefill_attention_ref(q, kv_cache, block_tables, seq_lens, query_start, scale,
                                sliding_window=None) -> torch.Tensor:
    """Loop over sequences; gather each context; causal softmax in float32."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    out = torch.empty_like(q)
    for i in range(block_tables.shape[0]):
        a, b, n = int(query_start[i]), int(query_start[i + 1]), int(seq_lens[i])
        blocks = block_tables[i, :-(-n // block_size)].long()
        k = kv_cache[0][blocks].reshape(-1, num_kv_heads, head_dim)[:n].float()
        v = kv_cache[1][blocks].reshape(-1, num_kv_heads, head_dim)[:n].float()
        k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [n, Hq, D]
        v = v.repeat_interleave(num_heads // num_kv_heads, dim=1)
        q_pos = torch.arange(n - (b - a), n, device=q.device)[:, None]
        k_pos = torch.arange(n, device=q.device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        scores = torch.einsum("qhd,khd->hqk", q[a:b].float(), k) * scale
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)
    return out
