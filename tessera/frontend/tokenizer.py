"""Tokenizer and generation defaults for a model source (the API process's side).

`load_tokenizer(ModelConfig, ModelSource)` returns a Hugging Face tokenizer (with its chat
template) from the model folder, from the GGUF metadata, or None for named random shapes.
In a process that keeps torch out (frontend/torch_free.py: the API server's), a GGUF
file's tokenizer comes from a folder exported once by a subprocess
(frontend/gguf_tokenizer.py). `generation_defaults(source)` reads `generation_config.json`
sampling defaults and `generation_eos_ids(source)` its EOS ids.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from tessera.config import ModelConfig
from tessera.frontend.gguf_tokenizer import exported_tokenizer_dir
from tessera.frontend.torch_free import torch_kept_out
from tessera.models.source import ModelSource

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def load_tokenizer(cfg: ModelConfig, source: ModelSource) -> Optional[Any]:
    if cfg.skip_tokenizer_init:
        return None
    path = cfg.tokenizer or source.path
    if path.endswith(".gguf") and os.path.isfile(path):
        if torch_kept_out():  # transformers' GGUF reader needs torch: build it elsewhere
            from transformers import AutoTokenizer
            return AutoTokenizer.from_pretrained(exported_tokenizer_dir(path))
        from tessera.models.gguf_meta import load_gguf_tokenizer
        return load_gguf_tokenizer(path)
    if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in
                                   ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(path)
    if source.kind == "dummy" and cfg.tokenizer is None:
        return None
    raise FileNotFoundError(f"No tokenizer found at {path!r} (tokenizer.json or "
                            "tokenizer_config.json); pass tokenizer=... or skip_tokenizer_init=True.")


def generation_defaults(source: ModelSource) -> dict[str, Any]:
    if source.kind != "hf":
        return {}
    path = os.path.join(source.path, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        cfg = json.load(f)
    return {k: cfg[k] for k in _SAMPLING_KEYS if cfg.get(k) is not None}


def generation_eos_ids(source: ModelSource) -> tuple[int, ...]:
    """EOS ids from generation_config.json (Llama 3 lists several there)."""
    if source.kind != "hf":
        return ()
    path = os.path.join(source.path, "generation_config.json")
    if not os.path.isfile(path):
        return ()
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (eos,)
