"""Tessera equals HF transformers on the same weights (fp32, CPU).

Tiny random Llama (sharded safetensors), Llama-3 rope scaling with MQA, Qwen2 (QKV
bias, tied embeddings) and Mistral (sliding window shorter than the sequences) run with
prompts of different lengths in one batch: plainly, with chunked prefill forced small,
and with preemption forced by a tiny block pool. Greedy tokens must be identical for 40
new tokens and each token's logprob within 1e-3 of HF's log_softmax; prompt logprobs
too.
"""
from __future__ import annotations

import pytest
import torch

from tessera import LLM, SamplingParams
from tests.conftest import hf_greedy

NEW_TOKENS = 40
PROMPTS = [[5, 17, 99, 3], list(range(20, 77)), [300, 7, 7, 150, 42, 8, 9, 10, 11, 12, 13, 14],
           [1] + list(range(100, 131))]

SETTINGS = {
    "batched": dict(num_blocks=256, block_size=16),
    "chunked_prefill": dict(num_blocks=256, block_size=8, max_num_batched_tokens=13),
    # 4 prompts x ~100 tokens need ~26 blocks of 16; 12 blocks force preemption
    "preemption": dict(num_blocks=12, block_size=16, max_num_batched_tokens=64),
}


def _run(folder: str, setting: str):
    llm = LLM(folder, skip_tokenizer_init=True, device="cpu", **SETTINGS[setting])
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    return llm, outs


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_tokens_and_logprobs_equal_hf(tiny_model, setting):
    arch, folder, hf_model = tiny_model
    llm, outs = _run(folder, setting)
    for prompt, out in zip(PROMPTS, outs):
        ref_tokens, ref_logprobs = hf_greedy(hf_model, prompt, NEW_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, f"{arch}/{setting}: prompt of {len(prompt)} tokens"
        for step, (tok, entry) in enumerate(zip(got.token_ids, got.logprobs)):
            assert abs(entry[tok].logprob - ref_logprobs[step][tok].item()) < 1e-3
        assert got.finish_reason == "length"
    stats = llm.engine.stats()
    assert stats["free_blocks"] == stats["num_blocks"], "KV blocks leaked"
    if setting == "preemption":
        assert stats["preemptions"] > 0, "the tiny pool was meant to force preemption"


def test_prompt_logprobs_equal_hf(tiny_model):
    arch, folder, hf_model = tiny_model
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
              device="cpu")
    prompt = PROMPTS[1]
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(max_tokens=1, prompt_logprobs=3, temperature=0))[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].float(), -1)
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        entry = out.prompt_logprobs[i]
        assert abs(entry[prompt[i]].logprob - ref[i - 1, prompt[i]].item()) < 1e-3
        top = ref[i - 1].topk(3).indices.tolist()
        assert set(top) <= set(entry), f"{arch}: top-3 alternatives at position {i}"


def test_sharded_checkpoint_is_read(tmp_path):
    from tests.conftest import make_tiny_checkpoint
    import os
    make_tiny_checkpoint("llama", str(tmp_path), sharded=True)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, num_blocks=32, device="cpu")
    assert llm.generate({"prompt_token_ids": [1, 2, 3]},
                        SamplingParams(max_tokens=4, temperature=0))[0].outputs[0].token_ids


def test_prefix_cache_hits_give_the_same_tokens(tiny_model):
    arch, folder, hf_model = tiny_model
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=128, block_size=8, device="cpu")
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    first = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    again = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    for prompt, a, b in zip(PROMPTS, first, again):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.outputs[0].token_ids == hf_greedy(hf_model, prompt, 16)[0]
        assert b.num_cached_tokens == (len(prompt) - 1) // 8 * 8  # all full prompt blocks
    assert llm.engine.stats()["free_blocks"] == 128
