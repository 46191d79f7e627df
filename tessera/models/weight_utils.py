"""Checkpoint tensors that may not be read yet.

A weight loader receives either a torch.Tensor or a lazy safetensors slice (reading
happens when it is indexed): `shape_of`, `narrow` and `materialize` treat both alike, so
a tensor-parallel rank reads from the file only the rows or columns it keeps.
"""
from __future__ import annotations

from typing import Any

import torch


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x.get_shape())


def narrow(x: Any, dim: int, start: int, size: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x.narrow(dim, start, size)
    index = [slice(None)] * len(shape_of(x))
    index[dim] = slice(start, start + size)
    return x[tuple(index)]  # reads just this part


def materialize(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else x[:]
