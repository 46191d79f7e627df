"""GGUF tensors kept quantized: Q8_0, Q4_0 and Q4_1 blocks as Tessera's formats.

Objects: KEPT_TYPES (the GGML types read as they are), `gguf_quantized(tensor)` ->
QuantizedWeight (quant/formats.py) or None for any other type, `permute_rows(qw, order)`.
llama.cpp's blocks of 32 weights along K (ggml-common.h), each with an fp16 scale d:
- Q8_0 (34 bytes): d, then 32 int8 q: w = d * q -> int8 in groups of 32 (scale d);
- Q4_0 (18 bytes): d, then 16 bytes, byte j holding element j (low nibble) and j + 16
  (high): w = d * (q - 8) -> int4 in groups of 32, scale d, offset -8 d;
- Q4_1 (20 bytes): d, m, then the same 16 bytes: w = d * q + m -> scale d, offset m.
The nibbles are reordered into Tessera's packing (columns 2j, 2j + 1 in one byte); the
scales keep their fp16 values, so dequantizing gives exactly what gguf's dequantize gives.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tessera.quant.formats import QuantizedWeight, pack_int4

BLOCK = 32
KEPT_TYPES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}  # bytes per block


def _blocks(tensor, nbytes: int) -> torch.Tensor:
    """The tensor's raw blocks: uint8 [rows, K / 32, nbytes]."""
    raw = np.array(tensor.data, copy=True)  # uint8 [rows, bytes per row], writable
    return torch.from_numpy(raw).view(raw.shape[0], -1, nbytes)


def _fp16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 at byte offset `at` of each block: [rows, K / 32] float16."""
    return blocks[..., at:at + 2].contiguous().view(torch.float16).squeeze(-1)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """GGML's 16 bytes per block [rows, nb, 16] -> q [rows, nb * 32] in column order."""
    q = torch.cat([qs & 0xF, qs >> 4], dim=-1)  # elements 0..15, then 16..31
    return q.reshape(qs.shape[0], -1)


def gguf_quantized(tensor) -> Optional[QuantizedWeight]:
    """A GGUF tensor of a kept type as a QuantizedWeight [rows, K] (CPU), else None."""
    kind = tensor.tensor_type.name
    if kind not in KEPT_TYPES or len(tensor.data.shape) != 2:
        return None
    blocks = _blocks(tensor, KEPT_TYPES[kind])
    d = _fp16(blocks, 0)  # [rows, K / 32]
    if kind == "Q8_0":
        q = blocks[..., 2:].contiguous().view(torch.int8).reshape(blocks.shape[0], -1)
        return QuantizedWeight("int8", q, d, None, BLOCK)
    if kind == "Q4_0":
        q, offset = _nibbles(blocks[..., 2:]), d * -8.0
    else:
        q, offset = _nibbles(blocks[..., 4:]), _fp16(blocks, 2)
    return QuantizedWeight("int4", pack_int4(q), d, offset, BLOCK)


def permute_rows(qw: QuantizedWeight, order: torch.Tensor) -> QuantizedWeight:
    """The same weight with its rows in `order` (every per-row part reindexed)."""
    return qw._replace(data=qw.data[order], scale=qw.scale[order],
                       offset=None if qw.offset is None else qw.offset[order])
