"""The checkpoint's metadata, resolved once, where requests come in.

`resolve_config(config)` -> (config with its ModelInfo filled, tokenizer or None): the
source (models/source.py: config.json or the GGUF header; no weights, no torch), the
tokenizer (frontend/tokenizer.py), the EOS ids (the model's, its generation config's and
its tokenizer's), the one context length (`max_model_len`: asked for, at most the model's),
the checkpoint's own quantization (models/checkpoint_quant.py)
and the sampling defaults of the generation config `generation_config` picks (logged when
there are some). The ModelInfo then travels with the config
to the engine process and every worker, which never read the checkpoint's metadata again.
A config already resolved is resolved again only for its tokenizer.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from tessera.config import EngineConfig, ModelConfig, ModelInfo
from tessera.frontend.tokenizer import (generation_config_path, generation_defaults,
                                        generation_eos_ids, load_tokenizer)
from tessera.models.checkpoint_quant import checkpoint_quant
from tessera.models.source import ModelSource, resolve_source
from tessera.quant_policy import resolve_policy

logger = logging.getLogger(__name__)


def resolve_config(config: EngineConfig) -> tuple[EngineConfig, Optional[Any]]:
    resolve_policy(config.quant)  # a bad policy file fails here, before any process starts
    source = resolve_source(config.model) if config.model_info is None else ModelSource(
        config.model_info.kind, config.model_info.path, config.model_info.arch)
    tokenizer = load_tokenizer(config.model, source)
    if config.model_info is None:
        info = _model_info(config.model, source, tokenizer)
        config = dataclasses.replace(config, model_info=info)
    return config, tokenizer


def _model_info(cfg: ModelConfig, source: ModelSource, tokenizer) -> ModelInfo:
    ids = set(source.arch.eos_token_ids)  # the checkpoint's own generation config's too
    ids |= set(generation_eos_ids(generation_config_path(cfg, source, "auto")))
    chosen = generation_config_path(cfg, source)
    if cfg.generation_config not in ("auto", "none"):
        ids |= set(generation_eos_ids(chosen))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    arch = dataclasses.replace(source.arch, eos_token_ids=tuple(sorted(ids)))
    limit = arch.max_position_embeddings
    if cfg.max_model_len is not None and cfg.max_model_len > limit:
        raise ValueError(f"max_model_len {cfg.max_model_len} is longer than the model's context "
                         f"({limit} positions).")
    defaults = generation_defaults(chosen)
    if defaults:
        logger.info("default sampling parameters from %s: %s (--generation-config none for "
                    "Tessera's)", chosen, ", ".join(f"{k}={v}" for k, v in defaults.items()))
    quant = checkpoint_quant(source.kind, source.path)
    return ModelInfo(source.kind, source.path, arch, cfg.max_model_len or limit, defaults,
                     quant.method, quant.layers)
