"""GGUF tensors kept quantized: Q8_0, Q4_0, Q4_1 and Q4_K blocks as Tessera's formats.

Objects: KEPT_TYPES (the GGML types read as they are: bytes a block; the same types as
models/checkpoint_quant.py's _GGUF_KEPT, which says what they become),
`gguf_quantized(tensor)` -> QuantizedWeight (quant/formats.py) or None for any other
type, `permute_rows(qw, order)`.
llama.cpp's blocks along K (ggml-common.h, ggml-quants.c):
- Q8_0 (34 bytes, 32 weights): fp16 d, then 32 int8 q: w = d * q -> int8 in groups of 32
  (scale d);
- Q4_0 (18 bytes, 32 weights): d, then 16 bytes, byte j holding element j (low nibble)
  and j + 16 (high): w = d * (q - 8) -> int4 in groups of 32, scale d, offset -8 d;
- Q4_1 (20 bytes, 32 weights): d, m, then the same 16 bytes: w = d * q + m -> scale d,
  offset m;
- Q4_K (144 bytes, 256 weights: 8 sub-blocks of 32): fp16 d and dmin, 12 bytes of 6-bit
  sub-block scales sc and minimums m, then 128 bytes, bytes 32c..32c + 31 holding
  sub-block 2c in their low nibbles and 2c + 1 in their high ones: w = (d sc) q - dmin m
  -> int4 in groups of 32, scale d sc and offset -dmin m in float32 (products of an fp16
  and a 6-bit integer; a 16-bit model stores them in fp16, within 2^-11 of them).
The nibbles are reordered into Tessera's packing (columns 2j, 2j + 1 in one byte); the
scales keep their values, so dequantizing gives exactly what gguf's dequantize gives
(float32 arithmetic, the same products).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tessera.quant.formats import QuantizedWeight, pack_int4

BLOCK = 32  # weights a group of every kept type (Q4_K's sub-blocks)
KEPT_TYPES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20,
              "Q4_K": 144}  # bytes a block (of 32 weights; Q4_K's of 256)


def _blocks(tensor, nbytes: int) -> torch.Tensor:
    """The tensor's raw blocks: uint8 [rows, blocks a row, nbytes]."""
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
    if kind == "Q4_K":
        return _q4_k(blocks)
    d = _fp16(blocks, 0)  # [rows, K / 32]
    if kind == "Q8_0":
        q = blocks[..., 2:].contiguous().view(torch.int8).reshape(blocks.shape[0], -1)
        return QuantizedWeight("int8", q, d, None, BLOCK)
    if kind == "Q4_0":
        q, offset = _nibbles(blocks[..., 2:]), d * -8.0
    else:
        q, offset = _nibbles(blocks[..., 4:]), _fp16(blocks, 2)
    return QuantizedWeight("int4", pack_int4(q), d, offset, BLOCK)


def _q4_k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K's 12 bytes [rows, nb, 12] -> the sub-blocks' 6-bit (sc, m), each [rows, nb, 8]:
    bytes 0-3 hold sc 0-3 in their low 6 bits, 4-7 m 0-3; sc / m 4-7 take their low 4 bits
    from bytes 8-11's low / high nibbles and their top 2 from bytes 0-3 / 4-7's top 2."""
    low, high, rest = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([low & 0x3F, (rest & 0x0F) | ((low >> 2) & 0x30)], dim=-1)
    m = torch.cat([high & 0x3F, (rest >> 4) | ((high >> 2) & 0x30)], dim=-1)
    return sc, m


def _q4_k(blocks: torch.Tensor) -> QuantizedWeight:
    """Q4_K blocks uint8 [rows, K / 256, 144] -> int4 in groups of 32, float32 scales."""
    rows, nb = blocks.shape[:2]
    d, dmin = _fp16(blocks, 0).float(), _fp16(blocks, 2).float()  # [rows, nb]
    sc, m = _q4_k_scales(blocks[..., 4:16])  # [rows, nb, 8]
    scale = (d[..., None] * sc.float()).reshape(rows, nb * 8)  # [rows, K / 32]
    offset = -(dmin[..., None] * m.float()).reshape(rows, nb * 8)
    qs = blocks[..., 16:].reshape(rows, nb, 4, 1, 32)  # four chunks of 32 bytes
    q = torch.cat([qs & 0xF, qs >> 4], dim=3).reshape(rows, nb * 256)  # sub-blocks in order
    return QuantizedWeight("int4", pack_int4(q), scale, offset, BLOCK)


def permute_rows(qw: QuantizedWeight, order: torch.Tensor) -> QuantizedWeight:
    """The same weight with its rows in `order` (every per-row part reindexed)."""
    return qw._replace(data=qw.data[order], scale=qw.scale[order],
                       offset=None if qw.offset is None else qw.offset[order])
