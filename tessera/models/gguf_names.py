"""GGUF tensor names and types, checked from the header (no torch).

`hf_name(gguf_name)` -> the Hugging Face parameter name of a GGUF tensor (None for the
ones folded into the config, e.g. RoPE tables; ValueError for one with no counterpart).
`check_gguf_tensors(reader, path)` checks, before any weight is read, that every tensor
the weight reader (models/loader/gguf.py) will take has a known name and a type the
installed `gguf` package can dequantize: a file that cannot load fails at start, in a
second, not minutes into loading its weights.
"""
from __future__ import annotations

import re

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


def hf_name(gguf_name: str) -> str | None:
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


def readable_types() -> set:
    """The GGML tensor types the installed gguf package turns into numbers."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import _type_traits  # the quantized types it implements

    return {Q.F32, Q.F16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64} | set(_type_traits)


def check_gguf_tensors(reader, path: str) -> None:
    """ValueError naming every tensor the weight reader could not take, by name or type."""
    readable = readable_types()
    unknown, unreadable = [], {}
    for tensor in reader.tensors:
        try:
            if hf_name(tensor.name) is None:
                continue
        except ValueError:
            unknown.append(tensor.name)
            continue
        if tensor.tensor_type not in readable:
            unreadable.setdefault(tensor.tensor_type.name, []).append(tensor.name)
    problems = []
    if unknown:
        problems.append(f"tensors with no known Hugging Face counterpart: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    for kind, names in unreadable.items():
        problems.append(f"{len(names)} tensor(s) of type {kind} (e.g. {names[0]}), which the "
                        "installed gguf package cannot dequantize")
    if problems:
        raise ValueError(f"GGUF file {path} cannot be loaded: {'; '.join(problems)}.")
