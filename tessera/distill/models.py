"""Teacher and student as trainable Hugging Face transformers models, and the output folder.

Objects:
- `load_causal_lm(path, dtype)`: an HF folder (config.json + safetensors) or a llama.cpp
  GGUF file (dequantized: the same 16/32-bit weights Tessera's exact path serves) as a
  transformers `*ForCausalLM` in float32 (training precision) and its tokenizer.
- `student_from_teacher(teacher, num_layers)`: a student of `num_layers` of the teacher's
  decoder layers, evenly spread and always keeping the first and the last, initialised
  from them (embeddings, final norm and LM head copied); the tokenizer is the teacher's.
- `check_compatible(teacher, student)`: the student must score the same vocabulary.
- `save_hf_folder(model, tokenizer, out)`: config.json, model.safetensors, the tokenizer
  files and a generation_config.json that `tessera serve` and `--speculative-model` load.

GGUF -> transformers: `read_gguf_arch` gives the shape, which becomes a LlamaConfig or
Qwen2Config (`_hf_config`); `iter_gguf_weights(keep_quantized=False)` gives every tensor
under its HF name, llama.cpp's RoPE row permutation already undone.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

logger = logging.getLogger("tessera.distill")

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def _hf_config(arch) -> Any:
    """A transformers config for an ArchConfig (dense Llama and Qwen2 only)."""
    import transformers
    if arch.architecture not in SUPPORTED or arch.num_experts:
        raise ValueError(f"distillation supports {', '.join(SUPPORTED)} (dense); this model "
                         f"is {arch.architecture}")
    common = dict(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                  intermediate_size=arch.intermediate_size,
                  num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
                  num_key_value_heads=arch.num_kv_heads, head_dim=arch.head_dim,
                  rms_norm_eps=arch.rms_norm_eps, rope_theta=arch.rope_theta,
                  rope_scaling=arch.rope_scaling,
                  max_position_embeddings=arch.max_position_embeddings,
                  tie_word_embeddings=arch.tie_word_embeddings, bos_token_id=arch.bos_token_id,
                  eos_token_id=(list(arch.eos_token_ids) if len(arch.eos_token_ids) > 1 else
                                (arch.eos_token_ids[0] if arch.eos_token_ids else None)))
    if arch.architecture == "Qwen2ForCausalLM":
        return transformers.Qwen2Config(**common)
    return transformers.LlamaConfig(**common, attention_bias=arch.attention_bias)


def _from_gguf(path: str):
    import transformers

    from tessera.models.gguf_meta import load_gguf_tokenizer, read_gguf_arch
    from tessera.models.loader.gguf import iter_gguf_weights
    arch = read_gguf_arch(path)
    config = _hf_config(arch)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {name: tensor.float() for name, tensor in
             iter_gguf_weights(path, arch, keep_quantized=False)}
    if arch.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (arch.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    if arch.tie_word_embeddings:
        model.tie_weights()
    _rebuild_buffers(model, config)
    return model, load_gguf_tokenizer(path)


def _rebuild_buffers(model, config) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) were built on the meta device:
    rebuild the rotary module (of the class the model made) on the CPU."""
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from an HF folder or a .gguf file, in `dtype`, in train mode off."""
    import transformers
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path}")
    if path.endswith(".gguf"):
        model, tokenizer = _from_gguf(path)
        model = model.to(dtype)
    elif os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a Hugging Face model folder (no config.json)")
        arch = json.load(open(os.path.join(path, "config.json"))).get("architectures") or ["?"]
        if arch[0] not in SUPPORTED:
            raise ValueError(f"distillation supports {', '.join(SUPPORTED)}; {path} is "
                             f"{arch[0]}")
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path} has no tokenizer files ({e}); distillation tokenizes "
                             "text with the teacher's tokenizer and saves it with the "
                             "student") from e
    else:
        raise ValueError(f"{path} is neither a model folder nor a .gguf file")
    return model.eval(), tokenizer


def spread_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices of `total`, evenly spread, first and last included."""
    if not 1 <= keep <= total:
        raise ValueError(f"--student-layers must be between 1 and the teacher's {total} layers "
                         f"(got {keep})")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def student_from_teacher(teacher, num_layers: int):
    """A copy of the teacher keeping `num_layers` decoder layers (spread_layers)."""
    import copy
    kept = spread_layers(teacher.config.num_hidden_layers, num_layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    student = type(teacher)(config)
    state = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers."):].split(".", 1)
            if int(index) not in kept:
                continue
            name = f"model.layers.{kept.index(int(index))}.{rest}"
        state[name] = tensor.detach().clone()
    student.load_state_dict(state, strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        student.tie_weights()
    logger.info("student: teacher layers %s of %d", kept, teacher.config.num_hidden_layers)
    return student.to(next(teacher.parameters()).dtype).eval()


def check_compatible(teacher, student) -> None:
    t, s = teacher.config.vocab_size, student.config.vocab_size
    if t != s:
        raise ValueError(f"the student's vocabulary ({s} tokens) is not the teacher's ({t}): "
                         "distillation compares their distributions token by token, so both "
                         "must share one tokenizer")


def save_hf_folder(model, tokenizer, out: str) -> None:
    """An HF folder Tessera and transformers load as it is (float32 weights; `tessera serve`
    casts to its dtype)."""
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
