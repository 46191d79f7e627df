"""Named model shapes for random-weight runs (`load_format="dummy"`, benchmarks).

Speed depends on shapes, not trained values; these are the real architectures' shapes.
"""
from __future__ import annotations

from tessera.models.arch_config import ArchConfig

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

NAMED_SHAPES: dict[str, dict] = {
    "llama-3-8b": dict(architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       head_dim=128, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                       max_position_embeddings=131072, eos_token_ids=(128001, 128009)),
    "llama-3-70b": dict(architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=8192,
                        intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8,
                        head_dim=128, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                        max_position_embeddings=131072, eos_token_ids=(128001, 128009)),
    "llama-3.2-1b": dict(architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=2048,
                         intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                         head_dim=64, rope_theta=500000.0,
                         rope_scaling={**_LLAMA3_ROPE, "factor": 32.0},
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         eos_token_ids=(128001, 128009)),  # Llama-3-8B's draft
    "smollm2-135m": dict(architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                         head_dim=64, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True, eos_token_ids=(2,)),
    "qwen2.5-0.5b": dict(architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                         head_dim=64, rope_theta=1000000.0, max_position_embeddings=32768,
                         attention_bias=True, rms_norm_eps=1e-6, eos_token_ids=(151645,)),
    "qwen2.5-1.5b": dict(architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=1536,
                         intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                         head_dim=128, rope_theta=1000000.0, max_position_embeddings=32768,
                         attention_bias=True, rms_norm_eps=1e-6, eos_token_ids=(151645,)),
    "qwen2.5-7b": dict(architecture="Qwen2ForCausalLM", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                       head_dim=128, rope_theta=1000000.0, max_position_embeddings=32768,
                       attention_bias=True, rms_norm_eps=1e-6, eos_token_ids=(151645,)),
    "qwen2.5-32b": dict(architecture="Qwen2ForCausalLM", vocab_size=152064, hidden_size=5120,
                        intermediate_size=27648, num_layers=64, num_heads=40, num_kv_heads=8,
                        head_dim=128, rope_theta=1000000.0, max_position_embeddings=32768,
                        attention_bias=True, rms_norm_eps=1e-5, eos_token_ids=(151645,)),
    "mistral-7b": dict(architecture="MistralForCausalLM", vocab_size=32000, hidden_size=4096,
                       intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       head_dim=128, rope_theta=1000000.0, max_position_embeddings=32768,
                       eos_token_ids=(2,)),
    "mixtral-8x7b": dict(architecture="MixtralForCausalLM", vocab_size=32000, hidden_size=4096,
                         intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                         head_dim=128, rope_theta=1000000.0, max_position_embeddings=32768,
                         bos_token_id=1, eos_token_ids=(2,), num_experts=8,
                         num_experts_per_tok=2, moe_intermediate_size=14336,
                         moe_layers=tuple(range(32))),
}


def named_shape(name: str) -> ArchConfig:
    key = name.lower().removeprefix("dummy:")
    if key not in NAMED_SHAPES:
        raise ValueError(f"Unknown model shape {name!r}. Named shapes: {', '.join(NAMED_SHAPES)}; "
                         "or give a folder with a config.json.")
    return ArchConfig(**NAMED_SHAPES[key])
