"""Paged attention over the KV cache, through the ops the model was built with.

Objects: AttentionMetadata (built once per step by the model runner, passed explicitly to
every layer; no global state), RaggedMetadata (the sequences of more than one new token,
or all of them on the reference path) and Attention (rotates q and k and writes this
step's K/V into the paged cache, then attends each query to its sequence's cached
context: layers/ops.py). With kernel ops the step's one-token sequences come first and go
to the Triton decode kernel, the rest (prefill chunks) to the Triton prefill kernel; with
the reference ops everything is ragged and takes `paged_attention_ref`
(kernels/reference.py).

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
from torch import nn

from tessera.layers.context import current


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
        self.ops = current().ops

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """positions: [T]; q: [T, Hq, D]; k, v: [T, Hkv, D]; kv_cache: [2, N, bs, Hkv, D]
        -> [T, Hq * D]. Rotates q and k, stores k and v in the cache, attends."""
        q = self.ops.rotary_kv_write(q, k, v, positions, self.rotary_emb.cos_sin, kv_cache,
                                     meta.slot_mapping)
        return self.attend(q, kv_cache, meta)

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor,
               meta: AttentionMetadata) -> torch.Tensor:
        """Rotated q [T, Hq, D], this step's K/V already in the cache -> [T, Hq * D]."""
        out = self.ops.attention(q, kv_cache, meta, self.scale, self.sliding_window)
        return out.view(q.shape[0], self.num_heads * self.head_dim)
