"""Row argmax over a wide last dimension (logits over the vocabulary), Triton (its
definition: `argmax_ref`, kernels/reference.py).

x [N, V] float32 / bf16 / fp16 -> [N] int64: the index of each row's largest value, the first one where
several are equal (as torch.argmax gives). NaN counts as larger than everything (as in
torch.argmax), so a row with a NaN gives its first NaN.

PyTorch reduces a row of 128k logits in one thread block (~26 us on an H100, for any
number of rows up to the SM count): in a decode step of a few rows, longer than the
attention of a layer. Here kernel 1 (`_argmax_partial`) splits each row into CHUNK-wide
pieces, one program each, and writes each piece's (max, first index); kernel 2
(`_argmax_final`) picks, per row, the first piece holding the row's max. Both take part
in programmatic dependent launch (kernels/pdl.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args

CHUNK = 4096  # elements per program of kernel 1
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # compared in float32 exactly


@triton.jit
def _argmax_partial(x_ptr, val_ptr, idx_ptr, V, stride_x, num_chunks, CHUNK: tl.constexpr,
                    USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < V, other=float("-inf"))
    x = x.to(tl.float32)
    nan = x != x
    first_nan = tl.min(tl.where(nan, cols, V), axis=0)  # V: none
    best = tl.max(x, axis=0)  # NaN-free max (NaN rows are handled by first_nan)
    # (a chunk of only -inf matches at its first column, valid: the row's answer is then
    # its first column, as torch.argmax gives)
    first_best = tl.min(tl.where(x == best, cols, V), axis=0)
    has_nan = first_nan < V
    out = row * num_chunks + chunk
    tl.store(val_ptr + out, tl.where(has_nan, float("nan"), best))
    tl.store(idx_ptr + out, tl.where(has_nan, first_nan, first_best))


@triton.jit
def _argmax_final(val_ptr, idx_ptr, out_ptr, num_chunks, CHUNKS_PAD: tl.constexpr,
                  USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    chunks = tl.arange(0, CHUNKS_PAD)
    ok = chunks < num_chunks
    v = tl.load(val_ptr + row * num_chunks + chunks, mask=ok, other=float("-inf"))
    i = tl.load(idx_ptr + row * num_chunks + chunks, mask=ok, other=0)
    nan = ok & (v != v)  # a chunk holding a NaN wins, the first one
    first_nan = tl.min(tl.where(nan, chunks, CHUNKS_PAD), axis=0)
    best = tl.max(tl.where(nan, float("-inf"), v), axis=0)
    first_best = tl.min(tl.where(ok & (v == best), chunks, CHUNKS_PAD), axis=0)
    first = tl.where(first_nan < CHUNKS_PAD, first_nan, first_best)
    tl.store(out_ptr + row, tl.sum(tl.where(chunks == first, i, 0), axis=0).to(tl.int64))


def argmax_rows(x: torch.Tensor, pdl: bool = True) -> torch.Tensor:
    """x [N, V] (float) -> [N] int64, each row's first maximum (kernel 1 then kernel 2)."""
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"argmax_rows takes [N, V] with V > 0, got {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"argmax_rows compares in float32: {x.dtype} is not taken")
    rows, vocab = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0:
        return out
    chunk = min(CHUNK, triton.next_power_of_2(vocab))
    num_chunks = triton.cdiv(vocab, chunk)
    vals = torch.empty(rows * num_chunks, dtype=torch.float32, device=x.device)
    idxs = torch.empty(rows * num_chunks, dtype=torch.int32, device=x.device)
    launch = pdl_launch_args(x.device, pdl)
    _argmax_partial[(rows, num_chunks)](x, vals, idxs, vocab, x.stride(0), num_chunks,
                                        CHUNK=chunk, **launch)
    _argmax_final[(rows,)](vals, idxs, out, num_chunks,
                           CHUNKS_PAD=max(16, triton.next_power_of_2(num_chunks)), **launch)
    return out
