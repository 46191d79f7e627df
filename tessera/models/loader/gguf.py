"""GGUF weights: each tensor under its Hugging Face name, kept quantized or dequantized.

`iter_gguf_weights(path, arch)` yields `(hf_name, tensor)` one tensor at a time: a
linear layer's, the LM head's or the embedding's Q8_0 / Q4_0 / Q4_1 / Q4_K matrix as a
QuantizedWeight (loader/gguf_quant.py; dequantized, it equals gguf's dequantize),
any other tensor dequantized to float32 with `gguf.quants.dequantize`
(models/gguf_meta.py); renamed to Hugging Face
parameter names (models/gguf_names.py: names and types were checked from the header at
start) and, for `llama`, with llama.cpp's RoPE row permutation of attn_q / attn_k undone;
`count_gguf_tensors(path)` for the progress bar.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch

from tessera.models.arch_config import ArchConfig
from tessera.models.gguf_meta import dequantize_tensor, gguf_architecture, open_reader
from tessera.models.gguf_names import hf_name
from tessera.models.loader.gguf_quant import gguf_quantized, permute_rows

# a linear layer's weight (not an expert's), or the LM head's or the embedding's (a tied
# head's): what may come kept quantized (an embedding dequantizes it as it loads)
_KEPT = re.compile(r"\.(self_attn|mlp|shared_expert)\.\w+_proj\.weight$"
                   r"|^(lm_head|model\.embed_tokens)\.weight$")


def _unpermute_rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `reshape(n_head, 2, d/2, ...).swapaxes(1, 2)` of q/k rows."""
    rows = weight.shape[0]
    split = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def count_gguf_tensors(path: str) -> int:
    return len(open_reader(path).tensors)


def _rope_heads(name: str, arch: ArchConfig) -> int:
    """Heads of a llama.cpp-permuted q or k projection, else 0."""
    if ".self_attn.q_proj." in name:
        return arch.num_heads
    return arch.num_kv_heads if ".self_attn.k_proj." in name else 0


def iter_gguf_weights(path: str, arch: ArchConfig,
                      keep_quantized: bool = True) -> Iterator[tuple[str, object]]:
    """Yield (Hugging Face name, tensor in HF shape) for each weight, one at a time: a
    linear layer's (or the head's or embedding's) Q8_0 / Q4_0 / Q4_1 / Q4_K matrix as a
    QuantizedWeight (keep_quantized: the layer's method copies it or dequantizes it),
    anything else dequantized to float32."""
    reader = open_reader(path)
    permuted = gguf_architecture(reader, path) == "llama"
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue
        heads = _rope_heads(name, arch) if permuted else 0
        kept = gguf_quantized(tensor) if keep_quantized and _KEPT.search(name) else None
        if kept is not None:
            if heads:
                order = torch.from_numpy(_unpermute_rope_rows(np.arange(kept.out_features),
                                                              heads))
                kept = permute_rows(kept, order)
            yield name, kept
            continue
        values = dequantize_tensor(tensor)
        if heads:
            values = _unpermute_rope_rows(values, heads)
        yield name, torch.from_numpy(values)
