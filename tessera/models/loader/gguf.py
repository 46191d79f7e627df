"""GGUF weights: each tensor dequantized to float32 under its Hugging Face name.

`iter_gguf_weights(path, arch)` yields `(hf_name, float32 tensor)` one tensor at a time,
dequantized with `gguf.quants.dequantize` (models/gguf_meta.py), renamed to Hugging Face
parameter names and, for `llama`, with llama.cpp's RoPE row permutation of attn_q / attn_k
undone; `count_gguf_tensors(path)` for the progress bar.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch

from tessera.models.arch_config import ArchConfig
from tessera.models.gguf_meta import dequantize_tensor, gguf_architecture, open_reader


_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Tensors with no Hugging Face parameter: RoPE tables (folded into the config instead).


_SKIPPED = re.compile(r"rope_freqs\.weight|blk\.\d+\.attn_rot_embd(\.weight)?")


def _hf_name(gguf_name: str) -> str | None:
    """The Hugging Face parameter name for a GGUF tensor, or None for tensors to skip."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if _SKIPPED.fullmatch(gguf_name):
        return None
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no known Hugging Face counterpart.")


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
        name = _hf_name(tensor.name)
        if name is None:
            continue
        values = dequantize_tensor(tensor)
        if permuted and ".self_attn.q_proj." in name:
            values = _unpermute_rope_rows(values, arch.num_heads)
        elif permuted and ".self_attn.k_proj." in name:
            values = _unpermute_rope_rows(values, arch.num_kv_heads)
        yield name, torch.from_numpy(values)
