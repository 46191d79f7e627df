"""Paged decode attention (one new query token per sequence), Triton, GQA-aware, split
along the context; with `paged_decode_attention_ref`, the plain PyTorch reference.

Shapes: q [B, Hq, D]; kv_cache [2, num_blocks, block_size, Hkv, D]; block_tables
[B, max_blocks] int32/int64; seq_lens [B] (keys per sequence, the new token included)
-> out [B, Hq, D].

Kernel 1 (`_decode_partial`): one program per (sequence, KV head, split); its work,
`attend_group` (a jit function of its own, for kernels that attend a group elsewhere), holds
all the query heads that share the KV head (GQA group, padded to 16 rows for tl.dot) and
walks a range of the sequence in tiles of 64 tokens (128 from an fp8 cache when the
context is not split; at least a page; each token's page looked up in the block table),
an online softmax keeping the running max `m`, sum `l` and weighted values `acc`.
Kernel 2 (`_decode_reduce`) merges the splits.
No host value decides a shape, so a CUDA graph can capture both launches.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args
from tessera.kernels.attention_tiles import load_kv_tile, online_softmax_step

# A/B knob (benchmarks/kernels/decode_attention_kv.py --sweep): the partial kernel's tile of
# keys and launch options, e.g. {"TILE": 128, "num_warps": 8, "num_stages": 4}
LAUNCH_OVERRIDES: dict = {}


@triton.jit
def attend_group(q_ptr, kv_ptr, tables_ptr, seq, kv_head, seq_len, first_tile, last_tile,
                 lowest_key, scale, stride_qb, stride_qh, stride_kvs, stride_kvb, stride_kvt,
                 stride_kvh, stride_tb, max_blocks, GROUP: tl.constexpr,
                 GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 TILE: tl.constexpr, PRECISION: tl.constexpr):
    """The query heads of one KV head of one sequence over key tiles [first_tile,
    last_tile), keys below lowest_key masked -> the online softmax's m, l [G] and acc [G, D]."""
    rows = tl.arange(0, GROUP_PAD)  # query heads of this KV head
    dims = tl.arange(0, HEAD_DIM)
    toks = tl.arange(0, TILE)
    row_ok = rows < GROUP
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)  # [G, D]
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for tile in range(first_tile, last_tile):
        pos = tile * TILE + toks  # [TILE] token positions
        live = pos < seq_len
        k, v = load_kv_tile(kv_ptr, tables_ptr, seq, pos, live, kv_head, dims, stride_tb,
                            stride_kvs, stride_kvb, stride_kvt, stride_kvh, max_blocks,
                            BLOCK_SIZE)  # [TILE, D] each
        visible = (live & (pos >= lowest_key))[None, :]
        m, l, acc = online_softmax_step(q, k, v, visible, m, l, acc, scale, PRECISION)
    return m, l, acc


@triton.jit(do_not_specialize=["stride_tb", "num_splits", "max_blocks"])  # vary by step
def _decode_partial(q_ptr, kv_ptr, tables_ptr, seq_lens_ptr, acc_ptr, ml_ptr, out_ptr, scale,
                    window, stride_qb, stride_qh, stride_kvs, stride_kvb, stride_kvt, stride_kvh,
                    stride_tb, stride_ob, stride_oh, num_splits, max_blocks,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, NUM_HEADS: tl.constexpr,
                    PRECISION: tl.constexpr, DIRECT: tl.constexpr,
                    USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_tiles = tl.cdiv(seq_len, TILE)  # a tile: TILE tokens over TILE / BLOCK_SIZE pages
    tiles_per_split = tl.cdiv(num_tiles, num_splits)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    lowest_key = tl.maximum(seq_len - window, 0)  # window = seq_len bound when none
    m, l, acc = attend_group(q_ptr, kv_ptr, tables_ptr, seq, kv_head, seq_len, first_tile,
                             last_tile, lowest_key, scale, stride_qb, stride_qh, stride_kvs,
                             stride_kvb, stride_kvt, stride_kvh, stride_tb, max_blocks, GROUP,
                             GROUP_PAD, HEAD_DIM, BLOCK_SIZE, TILE, PRECISION)
    rows = tl.arange(0, GROUP_PAD)  # query heads of this KV head
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < GROUP
    heads = kv_head * GROUP + rows
    if DIRECT:  # one split: this program has the whole answer
        res = acc / tl.maximum(l, 1e-30)[:, None]
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
                 res.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        out = ((seq * NUM_HEADS + heads) * num_splits + split)
        tl.store(acc_ptr + out[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(ml_ptr + out * 2, m, mask=row_ok)
        tl.store(ml_ptr + out * 2 + 1, l, mask=row_ok)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_reduce(acc_ptr, ml_ptr, out_ptr, stride_ob, stride_oh, num_splits,
                   HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr, NUM_HEADS: tl.constexpr,
                   USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    ok = splits < num_splits
    row = (seq * NUM_HEADS + head) * num_splits + splits
    m = tl.load(ml_ptr + row * 2, mask=ok, other=float("-inf"))
    l = tl.load(ml_ptr + row * 2 + 1, mask=ok, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_max))  # [S]
    acc = tl.load(acc_ptr + row[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
    total = tl.sum(w * l, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.maximum(total, 1e-30)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + dims, out)


def launch_options(kv_cache: torch.Tensor, splits: int) -> dict:
    """The partial kernel's tile of keys and pipeline depth: 64 keys and Triton's 3 stages;
    with an fp8 cache, whose widening keeps the kernel busy, 5 stages and, once the context
    is not split, 128-key tiles (`benchmarks/kernels/decode_attention_kv.py --sweep`, one
    H100, 1k context: batch 64 / 256 / 512 in 67 / 229 / 447 us against 86 / 254 / 477; bf16 is at
    the copy bandwidth already, and no config beat its default). The stages matter under
    Triton 3.6 (the H100's), which pipelines these gathered loads (40 KB of shared memory
    at 5 stages against 23 KB at 3); triton 3.9 (the CPU machines') leaves them
    unpipelined. LAUNCH_OVERRIDES last."""
    block_size = kv_cache.shape[2]
    opts = dict(TILE=max(64, block_size))
    if kv_cache.dtype == torch.float8_e4m3fn:
        opts.update(num_stages=5, TILE=max(128 if splits == 1 else 64, block_size))
    return {**opts, **LAUNCH_OVERRIDES}


def default_num_splits(num_seqs: int, num_kv_heads: int) -> int:
    """Split the context only while (sequences x KV heads) leaves the GPU's ~132 SMs idle:
    at batch 1 (8 KV heads) 16 splits; from batch 32 on, none (no partials to merge)."""
    return max(1, min(16, 256 // (num_seqs * num_kv_heads)))


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float,
                           sliding_window: Optional[int] = None,
                           num_splits: Optional[int] = None,
                           out: Optional[torch.Tensor] = None, pdl: bool = True) -> torch.Tensor:
    num_seqs, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    group = num_heads // num_kv_heads
    max_blocks = block_tables.shape[1]
    splits = num_splits or default_num_splits(num_seqs, num_kv_heads)
    if out is None:
        out = torch.empty_like(q)
    direct = splits == 1
    acc = torch.empty(1 if direct else num_seqs * num_heads * splits * head_dim,
                      dtype=torch.float32, device=q.device)
    ml = torch.empty(1 if direct else num_seqs * num_heads * splits * 2, dtype=torch.float32,
                     device=q.device)
    window = sliding_window if sliding_window is not None else 1 << 30
    _decode_partial[(num_seqs, num_kv_heads, splits)](
        q, kv_cache, block_tables, seq_lens, acc, ml, out, scale, window,
        q.stride(0), q.stride(1), kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
        kv_cache.stride(3), block_tables.stride(0), out.stride(0), out.stride(1), splits,
        max_blocks,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, NUM_HEADS=num_heads,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 stays fp32 (no TF32)
        DIRECT=direct, **launch_options(kv_cache, splits), **pdl_launch_args(q.device, pdl))
    if direct:
        return out
    _decode_reduce[(num_seqs, num_heads)](
        acc, ml, out, out.stride(0), out.stride(1), splits, HEAD_DIM=head_dim,
        SPLITS_PAD=max(16, triton.next_power_of_2(splits)),  # one variant for 2..16 splits
        NUM_HEADS=num_heads,
        **pdl_launch_args(q.device, pdl))
    return out


def paged_decode_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                               sliding_window: Optional[int] = None) -> torch.Tensor:
    """Loop over sequences; gather each context; softmax in float32."""
    num_heads = q.shape[1]
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    out = torch.empty_like(q)
    for i in range(q.shape[0]):
        n = int(seq_lens[i])
        blocks = block_tables[i, :-(-n // block_size)].long()
        k = kv_cache[0][blocks].reshape(-1, num_kv_heads, q.shape[2])[:n].float()  # [n, Hkv, D]
        v = kv_cache[1][blocks].reshape(-1, num_kv_heads, q.shape[2])[:n].float()
        lo = max(0, n - sliding_window) if sliding_window is not None else 0
        k = k[lo:].repeat_interleave(num_heads // num_kv_heads, dim=1)  # [n', Hq, D]
        v = v[lo:].repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[i].float(), k) * scale
        out[i] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out
