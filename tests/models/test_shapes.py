"""Named shapes (`load_format="dummy"`): every one builds a valid ArchConfig, and the
Mixtral-8x7B shape equals what a Mixtral config.json gives and builds the real model's
46.7 B parameters (on the meta device: no memory)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tessera.models.registry import from_hf_dict
from tessera.models.registry import model_class
from tessera.models.shapes import NAMED_SHAPES, named_shape


@pytest.mark.parametrize("name", sorted(NAMED_SHAPES))
def test_named_shape_builds(name):
    arch = named_shape(name)
    assert arch.num_heads % arch.num_kv_heads == 0 and arch.kv_bytes_per_token > 0
    if arch.num_experts:
        assert 0 < arch.num_experts_per_tok <= arch.num_experts
        assert arch.moe_intermediate_size > 0 and arch.moe_layers
        assert all(0 <= i < arch.num_layers for i in arch.moe_layers)


def test_mixtral_shape_matches_its_config_json():
    import transformers
    cfg = transformers.MixtralConfig(vocab_size=32000, hidden_size=4096,
                                     intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8,
                                     num_local_experts=8, num_experts_per_tok=2,
                                     rope_theta=1e6, max_position_embeddings=32768,
                                     bos_token_id=1, eos_token_id=2).to_dict()
    cfg["architectures"] = ["MixtralForCausalLM"]
    ours, theirs = named_shape("mixtral-8x7b"), from_hf_dict(cfg)
    assert dataclasses.replace(theirs, torch_dtype=None) == ours


def test_mixtral_shape_builds_the_model():
    arch = named_shape("dummy:mixtral-8x7b")
    with torch.device("meta"):
        model = model_class(arch)(arch)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 46.70e9) < 0.01e9  # Mixtral-8x7B: 46.7 B parameters


def test_qwen_7b_shape_builds_the_model():
    """The 7B shape the structured-output benchmark pairs with Qwen2.5's tokenizer:
    Qwen2.5-7B's published 7.61 B parameters (untied embeddings, q/k/v biases)."""
    arch = named_shape("qwen2.5-7b")
    with torch.device("meta"):
        model = model_class(arch)(arch)
    assert abs(sum(p.numel() for p in model.parameters()) - 7.616e9) < 0.005e9


@pytest.mark.parametrize("name", ["llama-3-8b", "qwen2.5-0.5b", "mixtral-8x7b"])
def test_parameter_count_matches_the_built_model(name):
    """num_parameters() feeds the decode roofline of `tessera bench`: it must count what
    the model holds, experts, router and tied embeddings included."""
    arch = named_shape(name)
    with torch.device("meta"):
        model = model_class(arch)(arch)
    assert arch.num_parameters() == sum(p.numel() for p in model.parameters())
    if arch.num_experts:  # a token reads its top-k experts only
        per_expert = 3 * arch.hidden_size * arch.moe_intermediate_size * len(arch.moe_layers)
        skipped = arch.num_experts - arch.num_experts_per_tok
        assert arch.num_parameters(active_only=True) == arch.num_parameters() - skipped * per_expert


def test_benchmarks_engine_of_random_weights():
    """`bench.random_weights_engine`, which every benchmark script builds on: a named
    shape, its defaults (float32 off CUDA, 2048-token context) and overrides applied."""
    from tessera.bench.offline import random_weights_engine
    engine = random_weights_engine("smollm2-135m", num_blocks=8, max_num_seqs=4)
    assert engine.arch.hidden_size == 576
    assert engine.config.model.max_model_len == 2048
    assert engine.config.scheduler.max_num_seqs == 4 and engine.core.num_blocks == 8
    if not torch.cuda.is_available():
        assert engine.executor.info.dtype == "float32"


def test_latency_bench_says_when_no_step_decoded_the_whole_batch():
    """Prompts prefilled in many chunks while the first requests already finished: no
    step ran all sequences at once, and the error says what to change."""
    from tessera.bench.offline import random_weights_engine, run_latency
    engine = random_weights_engine("smollm2-135m", num_blocks=64, max_num_batched_tokens=16)
    with pytest.raises(ValueError, match="raise the output length"):
        run_latency(engine, batch=4, input_len=16, output_len=1, bandwidth=1e11)
    r = run_latency(engine, batch=2, input_len=8, output_len=6, bandwidth=1e11)
    assert r["decode_steps"] > 0 and r["tok_s"] > 0


def test_decode_roofline_bytes_leave_out_an_embedding_the_head_does_not_share():
    """A tied model's head is its embedding (read whole each step); a quantized head is
    its own copy, and then the embedding is only looked up by row: its bytes are not read."""
    from tessera.bench.offline import _weight_bytes_read, random_weights_engine
    tied = random_weights_engine("smollm2-135m", num_blocks=8)
    own = random_weights_engine("smollm2-135m", num_blocks=8, lm_head_quantization="int8")
    embed = 49152 * 576
    assert _weight_bytes_read(tied) == sum(tied.executor.info.weight_bytes.values())
    assert own.executor.info.weight_bytes["int8"] > embed  # the head, with its scales
    assert _weight_bytes_read(own) == sum(own.executor.info.weight_bytes.values()) - 4 * embed
