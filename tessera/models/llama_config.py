"""The architectures models/llama.py serves, and how each reads its Hugging Face config.

LlamaForCausalLM (Llama 2/3), MistralForCausalLM (a sliding window), Qwen2ForCausalLM
(q/k/v biases), MixtralForCausalLM and Qwen2MoeForCausalLM (mixture-of-experts blocks
where `moe_layers` says). `ARCHITECTURES` is what models/registry.py collects. No torch.
"""
from __future__ import annotations

from typing import Any

from tessera.models.arch_config import ArchConfig, Architecture, base_fields

MODEL_CLASS = "tessera.models.llama:LlamaForCausalLM"


def llama_from_hf(cfg: dict[str, Any]) -> ArchConfig:
    return ArchConfig(**base_fields("LlamaForCausalLM", cfg))


def mistral_from_hf(cfg: dict[str, Any]) -> ArchConfig:
    return ArchConfig(**base_fields("MistralForCausalLM", cfg), sliding_window=_window(cfg))


def qwen2_from_hf(cfg: dict[str, Any]) -> ArchConfig:
    if cfg.get("use_sliding_window"):
        raise ValueError("Qwen2 with use_sliding_window=true is not supported yet.")
    return ArchConfig(**{**base_fields("Qwen2ForCausalLM", cfg), "attention_bias": True})


def mixtral_from_hf(cfg: dict[str, Any]) -> ArchConfig:
    return ArchConfig(**base_fields("MixtralForCausalLM", cfg), sliding_window=_window(cfg),
                      num_experts=int(cfg["num_local_experts"]),
                      num_experts_per_tok=int(cfg["num_experts_per_tok"]),
                      moe_intermediate_size=int(cfg["intermediate_size"]), norm_topk_prob=True,
                      moe_layers=tuple(range(int(cfg["num_hidden_layers"]))))


def qwen2_moe_from_hf(cfg: dict[str, Any]) -> ArchConfig:
    layers = int(cfg["num_hidden_layers"])
    step, dense = int(cfg.get("decoder_sparse_step", 1)), set(cfg.get("mlp_only_layers") or [])
    experts = int(cfg["num_experts"])
    return ArchConfig(
        **{**base_fields("Qwen2MoeForCausalLM", cfg), "attention_bias": True},
        num_experts=experts, num_experts_per_tok=int(cfg["num_experts_per_tok"]),
        moe_intermediate_size=int(cfg["moe_intermediate_size"]),
        shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        moe_layers=tuple(i for i in range(layers)
                         if i not in dense and experts and (i + 1) % step == 0))


def _window(cfg: dict[str, Any]) -> int | None:
    return int(cfg["sliding_window"]) if cfg.get("sliding_window") else None


ARCHITECTURES = (
    Architecture("LlamaForCausalLM", llama_from_hf, MODEL_CLASS),
    Architecture("Qwen2ForCausalLM", qwen2_from_hf, MODEL_CLASS),
    Architecture("MistralForCausalLM", mistral_from_hf, MODEL_CLASS),
    Architecture("MixtralForCausalLM", mixtral_from_hf, MODEL_CLASS),
    Architecture("Qwen2MoeForCausalLM", qwen2_moe_from_hf, MODEL_CLASS),
)
