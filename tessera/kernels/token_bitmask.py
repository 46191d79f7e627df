"""Structured outputs' token bitmask applied to the logits in place, Triton (its
definition: `apply_token_bitmask_ref`, kernels/reference.py).

logits [N, V] float (any row stride) and bitmask [N, W] int32 (any row stride; W >= ceil(V /
32), else refused; bit j of word w allows token 32w + j): every disallowed token's logit
becomes -inf. One program per (row, BLOCK columns): it reads BLOCK / 32 words and the BLOCK
logits once and writes -inf where a bit is clear, one launch for the whole batch (the
PyTorch definition expands the mask to [N, V] booleans in several kernels and ~10 bytes a
logit of traffic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096  # columns per program (a multiple of 32)


@triton.jit
def _apply_bitmask(logits_ptr, mask_ptr, V, stride_logits, stride_mask,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < V
    words = tl.load(mask_ptr + row * stride_mask + cols // 32, mask=inside, other=0)
    allowed = ((words >> (cols % 32)) & 1) != 0
    ptrs = logits_ptr + row * stride_logits + cols
    logits = tl.load(ptrs, mask=inside)
    tl.store(ptrs, tl.where(allowed, logits, float("-inf")), mask=inside)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """logits [N, V] (unit column stride) in place; bitmask [N, W] int32 on its device."""
    n, vocab = logits.shape
    words = triton.cdiv(vocab, 32)
    if (bitmask.dtype != torch.int32 or bitmask.dim() != 2 or bitmask.shape[0] != n
            or bitmask.shape[1] < words):
        raise ValueError(f"bitmask must be int32 [{n}, >= {words}] for logits "
                         f"{list(logits.shape)}, got {bitmask.dtype} {list(bitmask.shape)}")
    if bitmask.device != logits.device:
        raise ValueError(f"bitmask on {bitmask.device}, logits on {logits.device}")
    if logits.stride(1) != 1 or bitmask.stride(1) != 1:
        raise ValueError("apply_token_bitmask needs rows of unit column stride")
    if n == 0:
        return
    grid = (n, triton.cdiv(vocab, BLOCK))
    _apply_bitmask[grid](logits, bitmask, vocab, logits.stride(0), bitmask.stride(0),
                         BLOCK=BLOCK)
