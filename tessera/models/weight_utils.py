"""Checkpoint tensors that may not be read yet, or that come quantized.

A weight loader receives a torch.Tensor, a lazy safetensors slice (reading happens when
it is indexed) or a QuantizedWeight (quant/formats.py: a checkpoint's own int8 / int4 /
fp8 matrix, its parts tensors or lazy slices): `shape_of` (a QuantizedWeight's logical
[N, K]), `narrow` (rows, or columns in whole quantization groups) and `materialize`
treat them alike, so a tensor-parallel rank reads only the part it keeps; `dense(x,
dtype)` materializes and dequantizes, for parameters that hold plain values.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from tessera.quant.formats import QuantizedWeight, dequantize


def shape_of(x: Any) -> tuple[int, ...]:
    if isinstance(x, QuantizedWeight):
        return (shape_of(x.data)[0], x.in_features_of(shape_of(x.data)[1]))
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x.get_shape())


def narrow(x: Any, dim: int, start: int, size: int) -> Any:
    if isinstance(x, QuantizedWeight):
        return _narrow_quantized(x, dim, start, size)
    if isinstance(x, torch.Tensor):
        return x.narrow(dim, start, size)
    index = [slice(None)] * len(shape_of(x))
    index[dim] = slice(start, start + size)
    return x[tuple(index)]  # reads just this part


def _narrow_quantized(qw: QuantizedWeight, dim: int, start: int, size: int) -> QuantizedWeight:
    parts = {"data": qw.data, "scale": qw.scale, "offset": qw.offset}
    if dim == 0:
        return qw._replace(**{k: None if v is None else narrow(v, 0, start, size)
                              for k, v in parts.items()})
    group = qw.group_size
    if group and (start % group or size % group):
        raise ValueError(f"a slice of columns [{start}, {start + size}) cuts the checkpoint's "
                         f"quantization groups of {group}: this tensor-parallel size does not "
                         f"fit its layout")
    per_byte = 2 if qw.kind == "int4" else 1
    data = narrow(qw.data, 1, start // per_byte, size // per_byte)
    if not group:  # per output channel: every column shares the row's scale
        return qw._replace(data=data)
    return qw._replace(data=data, scale=narrow(qw.scale, 1, start // group, size // group),
                       offset=None if qw.offset is None
                       else narrow(qw.offset, 1, start // group, size // group))


def materialize(x: Any) -> Any:
    if isinstance(x, QuantizedWeight):
        return x._replace(data=materialize(x.data), scale=materialize(x.scale),
                          offset=None if x.offset is None else materialize(x.offset))
    return x if isinstance(x, torch.Tensor) else x[:]


def dense(x: Any, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """x read, and dequantized if it is a QuantizedWeight (float32, or dtype)."""
    x = materialize(x)
    if isinstance(x, QuantizedWeight):
        return dequantize(x, dtype or torch.float32)
    return x
