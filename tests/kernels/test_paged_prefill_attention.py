"""Triton ragged/paged prefill attention vs its PyTorch reference (CPU: interpreter in
float32/float16; GPU: bfloat16 too). Sequences with and without a cached prefix, one
token and many, GQA, MQA, sliding window, scattered pages, block sizes 8 and 16."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels.paged_prefill_attention import (paged_prefill_attention,
                                                     paged_prefill_attention_ref)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _case(num_heads, num_kv_heads, query_lens, prefix_lens, block_size=16, head_dim=32,
          dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    seq_lens = [q + p for q, p in zip(query_lens, prefix_lens)]
    max_blocks = max(-(-n // block_size) for n in seq_lens) + 1
    num_blocks = len(seq_lens) * max_blocks + 2
    kv = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    tables = torch.randperm(num_blocks, generator=g)[:len(seq_lens) * max_blocks]
    tables = tables.view(len(seq_lens), max_blocks).to(torch.int32)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=g)
    starts = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32)
    to = dict(device=DEVICE)
    return (q.to(dtype=dtype, **to), kv.to(dtype=dtype, **to), tables.to(**to),
            torch.tensor(seq_lens, dtype=torch.int32, **to), starts.to(**to), max(query_lens))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 1)])
def test_matches_reference(dtype, heads):
    q, kv, tables, lens, starts, max_q = _case(*heads, query_lens=[70, 1, 20, 5],
                                               prefix_lens=[0, 33, 16, 0], dtype=dtype)
    got = paged_prefill_attention(q, kv, tables, lens, starts, max_q, 0.17)
    ref = paged_prefill_attention_ref(q, kv, tables, lens, starts, 0.17)
    assert torch.allclose(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype]), \
        (got.float() - ref.float()).abs().max()


def test_writes_into_the_rows_it_is_given():
    """out=: the layer hands it the rows after the decodes' (no concatenation after)."""
    q, kv, tables, lens, starts, max_q = _case(8, 2, query_lens=[40, 3], prefix_lens=[0, 20])
    buf = torch.full((q.shape[0] + 5, 8, 32), 7.0, device=DEVICE)
    got = paged_prefill_attention(q, kv, tables, lens, starts, max_q, 0.2, out=buf[5:])
    ref = paged_prefill_attention_ref(q, kv, tables, lens, starts, 0.2)
    assert got.data_ptr() == buf[5:].data_ptr()
    assert torch.allclose(buf[5:], ref, atol=1e-4, rtol=1e-4)
    assert (buf[:5] == 7.0).all()  # the rows before are untouched


def test_sliding_window_and_small_pages():
    q, kv, tables, lens, starts, max_q = _case(4, 2, query_lens=[40, 3], prefix_lens=[10, 50],
                                               block_size=8)
    got = paged_prefill_attention(q, kv, tables, lens, starts, max_q, 0.2, sliding_window=12)
    ref = paged_prefill_attention_ref(q, kv, tables, lens, starts, 0.2, sliding_window=12)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    full = paged_prefill_attention_ref(q, kv, tables, lens, starts, 0.2)
    assert not torch.allclose(got, full, atol=1e-3)


def test_matches_the_layer_reference():
    """Agrees with the model's ragged reference path (layers/attention.py)."""
    from tessera.kernels.reference import paged_attention_ref
    from tessera.layers.attention import RaggedMetadata
    q, kv, tables, lens, starts, max_q = _case(8, 2, query_lens=[9, 30], prefix_lens=[7, 0])
    q_lens = (starts[1:] - starts[:-1]).long()
    seq_idx = torch.repeat_interleave(torch.arange(2, device=DEVICE), q_lens)
    meta = RaggedMetadata(block_tables=tables.long(), seq_lens=lens.long(), query_lens=q_lens,
                          token_seq_idx=seq_idx,
                          token_query_idx=torch.arange(q.shape[0], device=DEVICE)
                          - starts[:-1].long()[seq_idx], max_query_len=max_q)
    layer = paged_attention_ref(q, kv, meta, 0.3)
    got = paged_prefill_attention(q, kv, tables, lens, starts, max_q, 0.3)
    assert torch.allclose(got, layer, atol=1e-4, rtol=1e-4)
