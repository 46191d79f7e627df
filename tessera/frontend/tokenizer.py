"""Tokenizer and generation defaults for a model source (the API process's side).

`load_tokenizer(ModelConfig, ModelSource)` returns a Hugging Face tokenizer (with its chat
template, or the one `chat_template` gives: a Jinja string or a file, checked by rendering
a one-message conversation) from the model folder, from the GGUF metadata, or None for
named random shapes. In a process that keeps torch out (frontend/torch_free.py: the API
server's), a GGUF file's tokenizer comes from a folder exported once by a subprocess
(frontend/gguf_tokenizer.py).

`generation_config_path(ModelConfig, source)` is the generation_config.json that
`--generation-config` picks (auto: the checkpoint's; none; a folder or file);
`generation_defaults(path)` reads its sampling defaults and `generation_eos_ids(path)` its
EOS ids.
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
        if cfg.chat_template:
            raise ValueError("chat_template needs a tokenizer (skip_tokenizer_init is set).")
        return None
    tokenizer = _load(cfg, source)
    if cfg.chat_template:
        if tokenizer is None:
            raise ValueError(f"chat_template needs a tokenizer; {source.path!r} has none.")
        tokenizer.chat_template = chat_template_text(cfg.chat_template)
        _check_chat_template(tokenizer, cfg.chat_template)
    return tokenizer


_JINJA_MARKS = ("{{", "{%", "{#")


def chat_template_text(value: str) -> str:
    """The template `value` names: a file's text, or `value` itself where it is Jinja."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if any(mark in value for mark in _JINJA_MARKS):
        return value
    raise FileNotFoundError(f"chat_template {value!r} is neither a file nor a Jinja template.")


def _check_chat_template(tokenizer, value: str) -> None:
    where = value if os.path.isfile(value) else "the chat_template given"
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      add_generation_prompt=True)
    except Exception as e:  # jinja2's TemplateError and whatever the template raises
        raise ValueError(f"{where} cannot render a conversation: "
                         f"{type(e).__name__}: {e}") from None


def _load(cfg: ModelConfig, source: ModelSource) -> Optional[Any]:
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


def generation_config_path(cfg: ModelConfig, source: ModelSource,
                           which: Optional[str] = None) -> Optional[str]:
    """The generation_config.json `which` (default: cfg.generation_config) names: auto ->
    the checkpoint's (None if it has none), none -> None, a folder or a file -> it."""
    which = which or cfg.generation_config
    if which == "none":
        return None
    if which == "auto":
        path = os.path.join(source.path, "generation_config.json")
        return path if os.path.isdir(source.path) and os.path.isfile(path) else None
    path = os.path.join(which, "generation_config.json") if os.path.isdir(which) else which
    if not os.path.isfile(path):
        raise FileNotFoundError(f"generation_config {which!r}: no such file or folder with a "
                                "generation_config.json (or give auto or none).")
    return path


def _read(path: Optional[str]) -> dict[str, Any]:
    if path is None:
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None


def generation_defaults(path: Optional[str]) -> dict[str, Any]:
    """The sampling defaults in a generation_config.json ({} for None)."""
    cfg = _read(path)
    return {k: cfg[k] for k in _SAMPLING_KEYS if cfg.get(k) is not None}


def generation_eos_ids(path: Optional[str]) -> tuple[int, ...]:
    """EOS ids from a generation_config.json (Llama 3 lists several there)."""
    eos = _read(path).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (eos,)
