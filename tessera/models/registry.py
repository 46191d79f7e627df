"""Registry: architecture name -> model class."""
from __future__ import annotations

from torch import nn

from tessera.models.arch_config import SUPPORTED_ARCHITECTURES, ArchConfig
from tessera.models.llama import LlamaForCausalLM

_MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": LlamaForCausalLM,  # MoE blocks where arch.moe_layers says
    "Qwen2MoeForCausalLM": LlamaForCausalLM,
}
assert set(_MODELS) == set(SUPPORTED_ARCHITECTURES)


def model_class(cfg: ArchConfig) -> type[nn.Module]:
    return _MODELS[cfg.architecture]
