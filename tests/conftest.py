"""Shared fixtures: tiny random Hugging Face checkpoints written to disk, the real
SmolLM2 GGUF path, and a helper to run HF transformers as the reference. Without a GPU,
Triton kernels are tested under the interpreter (TRITON_INTERPRET=1, set here first).

Tiny configs are random but seeded; `initializer_range` is raised so logits are peaked
enough that greedy choices are not near-ties (a tie would make equality a coin flip).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # kernels run under Triton's interpreter on CPU; this
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any import of triton

TINY = dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            initializer_range=0.08, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def _tiny_config(arch: str):
    import transformers
    if arch == "llama":
        return transformers.LlamaConfig(**TINY, rope_theta=10000.0)
    if arch == "llama3":  # llama3 rope scaling, MQA, untied
        return transformers.LlamaConfig(**{**TINY, "num_key_value_heads": 1}, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, rope_theta=500000.0)
    if arch == "qwen2":
        return transformers.Qwen2Config(**TINY, tie_word_embeddings=True)
    if arch == "mistral":  # a window shorter than the sequences, so it matters
        return transformers.MistralConfig(**TINY, sliding_window=24)
    if arch == "mixtral":
        return transformers.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2)
    if arch == "qwen2moe":  # shared expert, top-k not renormalized, one dense layer
        return transformers.Qwen2MoeConfig(**TINY, num_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=48,
                                           shared_expert_intermediate_size=96,
                                           mlp_only_layers=[1], norm_topk_prob=False)
    raise ValueError(arch)


def make_tiny_checkpoint(arch: str, folder: str, sharded: bool = False):
    import transformers
    torch.manual_seed(1234)
    cfg = _tiny_config(arch)
    if arch == "mistral":
        cfg._attn_implementation = "eager"  # HF applies the sliding window on this path
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder, max_shard_size="300KB" if sharded else "5GB")
    return model


@pytest.fixture(scope="session", params=["llama", "llama3", "qwen2", "mistral"])
def tiny_model(request, tmp_path_factory):
    """(arch, folder, HF model) for each architecture."""
    folder = str(tmp_path_factory.mktemp(f"tiny-{request.param}"))
    model = make_tiny_checkpoint(request.param, folder, sharded=request.param == "llama")
    return request.param, folder, model


@pytest.fixture(scope="session", params=["mixtral", "qwen2moe"])
def tiny_moe(request, tmp_path_factory):
    """(arch, folder, HF model) for the mixture-of-experts families."""
    folder = str(tmp_path_factory.mktemp(f"tiny-{request.param}"))
    return request.param, folder, make_tiny_checkpoint(request.param, folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny-llama-single"))
    return folder, make_tiny_checkpoint("llama", folder)


@pytest.fixture(scope="session")
def smollm2_path():
    from tessera.default_model import default_model_path
    return default_model_path()


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int):
    """HF reference: greedy tokens and the log_softmax of each step's logits."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    logprobs = [torch.log_softmax(l[0].float(), -1) for l in out.logits]
    return tokens, logprobs

