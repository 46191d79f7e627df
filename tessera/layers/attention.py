"""Paged attention, pure PyTorch: the path that runs everywhere and the reference that
the Triton kernels are tested against.

Objects: AttentionMetadata (built once per step by the model runner, passed explicitly to
every layer; no global state), RaggedMetadata (the sequences the reference path serves)
and Attention (writes this step's K/V into the paged cache, then attends each query to
its sequence's cached context). With kernels (CUDA), the step's one-token sequences come
first and go to the Triton decode kernel, the rest (prefill chunks) to the Triton prefill
kernel; without kernels, everything takes the PyTorch reference path.

KV cache of one layer: [2, num_blocks, block_size, num_kv_heads, head_dim], in the model's
dtype or fp8 (quant/kv_cache.py: stored saturated, read back widened). Token t of
a sequence lives in block `block_table[t // block_size]`, row `t % block_size`;
`slot_mapping` holds `block * block_size + row` for each token of this step.
Queries are ragged ([num_tokens, ...], sequences packed one after another); only inside
attention are they laid out per sequence, with a mask for causality, context length and
the optional sliding window. GQA/MQA: each KV head serves num_heads / num_kv_heads
query heads.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tessera.quant.kv_cache import store_rows


@dataclasses.dataclass
class RaggedMetadata:
    block_tables: torch.Tensor  # [B, max_blocks] int64 (padded with 0)
    seq_lens: torch.Tensor  # [B] int64: context length after this step
    query_lens: torch.Tensor  # [B] int64: new tokens of each sequence this step
    token_seq_idx: torch.Tensor  # [T] int64: which sequence each token belongs to
    token_query_idx: torch.Tensor  # [T] int64: index of the token within its sequence's queries
    max_query_len: int
    query_start: Optional[torch.Tensor] = None  # [B + 1] int64: offsets of each sequence's tokens
    # Built lazily per sliding window: [B, 1, max_query_len, max_blocks * block_size] bool
    _masks: dict = dataclasses.field(default_factory=dict)

    def mask(self, block_size: int, sliding_window: Optional[int]) -> torch.Tensor:
        if sliding_window not in self._masks:
            self._masks[sliding_window] = self._build_mask(block_size, sliding_window)
        return self._masks[sliding_window]

    def _build_mask(self, block_size: int, window: Optional[int]) -> torch.Tensor:
        dev = self.seq_lens.device
        num_keys = self.block_tables.shape[1] * block_size
        q_idx = torch.arange(self.max_query_len, device=dev)  # [Q]
        k_pos = torch.arange(num_keys, device=dev)  # [K]
        start = (self.seq_lens - self.query_lens)[:, None]  # [B, 1]: position of query 0
        q_pos = start + q_idx[None, :]  # [B, Q]
        mask = k_pos[None, None, :] <= q_pos[:, :, None]  # causal; also k < seq_len
        if window is not None:
            mask &= q_pos[:, :, None] - k_pos[None, None, :] < window
        valid_q = q_idx[None, :] < self.query_lens[:, None]  # [B, Q]
        mask[:, :, 0] |= ~valid_q  # padded query rows see key 0, so softmax stays finite
        return mask[:, None]  # [B, 1, Q, K]


@dataclasses.dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    num_decode_tokens: int = 0  # the first tokens: one-token sequences, for the decode kernel
    decode_block_tables: Optional[torch.Tensor] = None  # [num_decode_tokens, max_blocks]
    decode_seq_lens: Optional[torch.Tensor] = None  # [num_decode_tokens]
    ragged: Optional[RaggedMetadata] = None  # the other sequences' tokens, after the decodes
    use_kernels: bool = False  # Triton: fused rotary + cache write (and the decode kernel)

    @property
    def decode_only(self) -> bool:
        return self.ragged is None


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, num_kv_heads: int, rotary_emb,
                 sliding_window: Optional[int] = None):
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.rotary_emb = rotary_emb
        self.sliding_window = sliding_window
        self.scale = head_dim ** -0.5

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """positions: [T]; q: [T, Hq, D]; k, v: [T, Hkv, D]; kv_cache: [2, N, bs, Hkv, D]
        -> [T, Hq * D]. Rotates q and k, stores k and v in the cache, attends."""
        if meta.use_kernels:
            from tessera.kernels.rotary_kv_write import rotary_kv_write
            q = rotary_kv_write(q, k, v, positions, self.rotary_emb.cos_sin, kv_cache,
                                meta.slot_mapping)
        else:
            q, k = self.rotary_emb(positions, q, k)
            write_kv_cache(k, v, kv_cache, meta.slot_mapping)
        return self.attend(q, kv_cache, meta)

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor,
               meta: AttentionMetadata) -> torch.Tensor:
        """Rotated q [T, Hq, D], this step's K/V already in the cache -> [T, Hq * D]."""
        nd = meta.num_decode_tokens
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, Hq, D]: decodes first
        if nd:
            from tessera.kernels.paged_decode_attention import paged_decode_attention
            paged_decode_attention(q[:nd], kv_cache, meta.decode_block_tables,
                                   meta.decode_seq_lens, self.scale, self.sliding_window,
                                   out=out[:nd])
        r = meta.ragged
        if r is not None and meta.use_kernels:
            from tessera.kernels.paged_prefill_attention import paged_prefill_attention
            paged_prefill_attention(q[nd:], kv_cache, r.block_tables, r.seq_lens,
                                    r.query_start, r.max_query_len, self.scale,
                                    self.sliding_window, out=out[nd:])
        elif r is not None:
            out[nd:] = paged_attention_ref(q[nd:], kv_cache, r, self.scale, self.sliding_window)
        return out.view(q.shape[0], self.num_heads * self.head_dim)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """k, v: [T, Hkv, D] into their slots, cast to the cache's dtype (fp8 saturates)."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    store_rows(kv_cache[0].view(-1, num_kv_heads, head_dim), slot_mapping, k)
    store_rows(kv_cache[1].view(-1, num_kv_heads, head_dim), slot_mapping, v)


def paged_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor, meta: RaggedMetadata,
                        scale: float, sliding_window: Optional[int] = None) -> torch.Tensor:
    """Attention of ragged queries over paged context. q: [T, Hq, D] -> [T, Hq, D]."""
    num_seqs, max_blocks = meta.block_tables.shape
    block_size, num_kv_heads, head_dim = kv_cache.shape[2:]
    keys = kv_cache[0][meta.block_tables].to(q.dtype)  # [B, max_blocks, bs, Hkv, D]
    values = kv_cache[1][meta.block_tables].to(q.dtype)  # (widened from an fp8 cache)
    keys = keys.view(num_seqs, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)
    values = values.view(num_seqs, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)
    q_pad = q.new_zeros(num_seqs, meta.max_query_len, q.shape[1], head_dim)  # [B, Q, Hq, D]
    q_pad[meta.token_seq_idx, meta.token_query_idx] = q
    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2), keys, values, attn_mask=meta.mask(block_size, sliding_window),
        scale=scale, enable_gqa=num_kv_heads != q.shape[1])  # [B, Hq, Q, D]
    return out.transpose(1, 2)[meta.token_seq_idx, meta.token_query_idx]  # [T, Hq, D]
