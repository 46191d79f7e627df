"""Triton paged decode attention vs its PyTorch reference.

CPU (interpreter): float32 and float16; GPU: bfloat16 too. Ragged context lengths (1 to
several pages, partial last page), GQA groups 1/3/4/8, MQA, sliding window, scattered
block tables, several split counts (including more splits than pages).
"""
from __future__ import annotations

import pytest
import torch

from tessera.kernels.paged_decode_attention import (paged_decode_attention,
                                                    paged_decode_attention_ref)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _case(num_heads, num_kv_heads, seq_lens, block_size=16, head_dim=64, dtype=torch.float32,
          seed=0):
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // block_size) for n in seq_lens) + 1
    num_blocks = len(seq_lens) * max_blocks + 3
    kv = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    perm = torch.randperm(num_blocks, generator=g)  # scattered pages
    tables = perm[:len(seq_lens) * max_blocks].view(len(seq_lens), max_blocks).to(torch.int32)
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=g)
    to = dict(device=DEVICE)
    return (q.to(dtype=dtype, **to), kv.to(dtype=dtype, **to), tables.to(**to),
            torch.tensor(seq_lens, dtype=torch.int32, **to))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 4), (9, 3), (8, 2), (32, 8), (8, 1)])
def test_matches_reference(dtype, heads):
    q, kv, tables, lens = _case(*heads, seq_lens=[1, 17, 40, 5], dtype=dtype)
    scale = q.shape[-1] ** -0.5
    got = paged_decode_attention(q, kv, tables, lens, scale)
    ref = paged_decode_attention_ref(q, kv, tables, lens, scale)
    assert torch.allclose(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype]), \
        (got.float() - ref.float()).abs().max()


@pytest.mark.parametrize("splits", [1, 2, 3, 8])
def test_split_counts_agree(splits):
    q, kv, tables, lens = _case(8, 2, seq_lens=[33, 64, 2])
    scale = 0.125
    ref = paged_decode_attention_ref(q, kv, tables, lens, scale)
    got = paged_decode_attention(q, kv, tables, lens, scale, num_splits=splits)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_sliding_window_and_small_pages():
    q, kv, tables, lens = _case(4, 2, seq_lens=[30, 9, 50], block_size=8, head_dim=32)
    ref = paged_decode_attention_ref(q, kv, tables, lens, 0.2, sliding_window=12)
    got = paged_decode_attention(q, kv, tables, lens, 0.2, sliding_window=12)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    full = paged_decode_attention_ref(q, kv, tables, lens, 0.2)
    assert not torch.allclose(got, full, atol=1e-3)  # the window changed the answer


def test_matches_the_model_reference_path():
    """The layer's ragged reference (layers/attention.py) agrees for one-token queries."""
    from tessera.kernels.reference import paged_attention_ref
    from tessera.layers.attention import RaggedMetadata
    q, kv, tables, lens = _case(8, 2, seq_lens=[3, 20, 16])
    b = len(lens)
    meta = RaggedMetadata(block_tables=tables.long(), seq_lens=lens.long(),
                             query_lens=torch.ones(b, dtype=torch.int64, device=DEVICE),
                             token_seq_idx=torch.arange(b, device=DEVICE),
                             token_query_idx=torch.zeros(b, dtype=torch.int64, device=DEVICE),
                             max_query_len=1)
    layer_ref = paged_attention_ref(q, kv, meta, 0.125)
    got = paged_decode_attention(q, kv, tables, lens, 0.125)
    assert torch.allclose(got, layer_ref, atol=1e-4, rtol=1e-4)
