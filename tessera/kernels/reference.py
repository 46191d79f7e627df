"""The PyTorch definitions of the ops the model's kernels compute, importable without
Triton: the reference ops (layers/ops.py) run them wherever no kernel runs (the CPU), and
the kernel tests compare each kernel against its definition here. Oracles of one kernel's
own internals (a pending norm's parts, the MoE alignment, the loop attention references)
stay beside that kernel.

Objects: `rms_norm_ref` (with the residual add fused: returns (normed, x + residual)),
`silu_and_mul_ref` ([gate | up] -> silu(gate) * up), `rotary_kv_write_ref` (rotate q and k,
store k and v in the paged cache, return rotated q), `paged_attention_ref` (ragged queries
over their paged context, one batched SDPA; the metadata is layers/attention.py's
RaggedMetadata, read by field), `argmax_ref`, `apply_token_bitmask_ref` (structured
outputs' mask: disallowed tokens' logits to -inf, in place).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from tessera.quant.kv_cache import store_rows


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None):
    """x [T, H] -> RMSNorm(x) [T, H]; with a residual: (RMSNorm(x + r), x + r)."""
    if residual is not None:
        x = x + residual
    xf = x.float()
    y = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if residual is None else (y, x)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * d] -> silu(x[:, :d]) * x[:, d:] [T, d]."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rotary_kv_write_ref(q, k, v, positions, cos_sin, kv_cache, slot_mapping) -> torch.Tensor:
    """q [T, Hq, D], k and v [T, Hkv, D], positions [T], cos_sin [max_pos, D]: k rotated and
    v stored in their slots of kv_cache [2, blocks, block_size, Hkv, D] (cast to its dtype;
    fp8 saturates) -> rotated q. Rotation in the activations' dtype, neox layout."""
    cos, sin = cos_sin[positions].to(q.dtype).unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2]

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    num_kv, head_dim = k.shape[1], k.shape[2]
    store_rows(kv_cache[0].view(-1, num_kv, head_dim), slot_mapping, rot(k))
    store_rows(kv_cache[1].view(-1, num_kv, head_dim), slot_mapping, v)
    return rot(q)


def paged_attention_ref(q: torch.Tensor, kv_cache: torch.Tensor, meta,
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


def argmax_ref(x: torch.Tensor) -> torch.Tensor:
    """x [N, V] -> [N] int64: each row's first maximum (NaN wins)."""
    return x.argmax(dim=-1)


def apply_token_bitmask_ref(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """logits [N, V] float, in place: tokens whose bit is 0 in bitmask [N, W] int32 (bit
    j of word w: token 32w + j) get -inf."""
    n, vocab = logits.shape
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask[:, :, None] >> shifts) & 1).bool().reshape(n, -1)[:, :vocab]  # [N, V]
    logits.masked_fill_(~allowed, float("-inf"))
