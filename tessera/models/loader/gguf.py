"""GGUF weights: each tensor dequantized to float32 under its Hugging Face name.

`iter_gguf_weights(path, arch)` yields `(hf_name, float32 tensor)` one tensor at a time,
dequantized with `gguf.quants.dequantize` (models/gguf_meta.py), renamed to Hugging Face
parameter names (models/gguf_names.py: names and types were checked from the header at
start) and, for `llama`, with llama.cpp's RoPE row permutation of attn_q / attn_k undone;
`count_gguf_tensors(path)` for the progress bar.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tessera.models.arch_config import ArchConfig
from tessera.models.gguf_meta import dequantize_tensor, gguf_architecture, open_reader
from tessera.models.gguf_names import hf_name


def _unpermute_rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `reshape(n_head, 2, d/2, ...).swapaxes(1, 2)` of q/k rows."""
    rows = weight.shape[0]
    split = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def count_gguf_tensors(path: str) -> int:
    return len(open_reader(path).tensors)


def iter_gguf_weights(path: str, arch: ArchConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (Hugging Face name, float32 tensor in HF shape) for each weight, one at a time."""
    reader = open_reader(path)
    permuted = gguf_architecture(reader, path) == "llama"
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue
        values = dequantize_tensor(tensor)
        if permuted and ".self_attn.q_proj." in name:
            values = _unpermute_rope_rows(values, arch.num_heads)
        elif permuted and ".self_attn.k_proj." in name:
            values = _unpermute_rope_rows(values, arch.num_kv_heads)
        yield name, torch.from_numpy(values)
