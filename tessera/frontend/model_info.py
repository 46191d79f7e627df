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
With a draft model (speculative decoding), its metadata is resolved the same way
(`draft_info`) and checked against the target's: the same vocabulary (by size, and token
by token where both have tokenizers), a context at least max_model_len long; speculation
is refused with pipeline stages.
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
    if config.speculative.method is not None:
        config = _resolve_draft(config, tokenizer)
    return config, tokenizer


def _resolve_draft(config: EngineConfig, tokenizer) -> EngineConfig:
    spec, info = config.speculative, config.info
    if config.parallel.pipeline_parallel_size > 1:
        raise ValueError("speculative decoding does not run with pipeline stages "
                         "(pipeline_parallel_size > 1); use tensor parallelism.")
    if spec.method != "draft" or config.draft_info is not None:
        return config
    fmt = "dummy" if config.model.load_format == "dummy" else "auto"
    draft_cfg = ModelConfig(model=spec.speculative_model, load_format=fmt,
                            skip_tokenizer_init=True)
    source = resolve_source(draft_cfg)
    arch = source.arch
    where = f"the draft model {spec.speculative_model!r}"
    if arch.vocab_size != info.arch.vocab_size:
        raise ValueError(f"{where} has a vocabulary of {arch.vocab_size} tokens, the model "
                         f"{info.arch.vocab_size}: a draft must share the model's tokenizer.")
    if arch.max_position_embeddings < info.max_model_len:
        raise ValueError(f"{where} reads at most {arch.max_position_embeddings} positions, "
                         f"fewer than max_model_len {info.max_model_len}; lower "
                         "--max-model-len.")
    if tokenizer is not None and source.kind != "dummy":
        draft_tok = load_tokenizer(dataclasses.replace(draft_cfg, skip_tokenizer_init=False),
                                   source)
        if draft_tok is not None and draft_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{where} has another tokenizer than the model (the same ids "
                             "must mean the same text).")
    draft = ModelInfo(source.kind, source.path, arch, info.max_model_len, {},
                      *_checkpoint_quant(source))
    return dataclasses.replace(config, draft_info=draft)


def _checkpoint_quant(source: ModelSource) -> tuple[str, dict]:
    quant = checkpoint_quant(source.kind, source.path)
    return quant.method, quant.layers


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
