"""The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF), against HF transformers.

Both load the same GGUF file (transformers dequantizes it with its own GGUF reader);
greedy tokens must be identical for 32 new tokens on prompts of different lengths run
in one batch, with chunked prefill, and the chat answer must be the known one.
"""
from __future__ import annotations

import os

import pytest

from tessera import LLM, SamplingParams
from tests.conftest import hf_greedy

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Once upon a time, in a land far away, there lived a dragon who loved to read "
           "books about the history of the stars and"]


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_path),
                                                gguf_file=os.path.basename(smollm2_path)).eval()


@pytest.fixture(scope="module")
def llm():
    return LLM(max_num_batched_tokens=24, num_blocks=128,  # the default model, chunked prefill
               device="cpu")  # HF runs on the CPU beside it


def test_greedy_equals_hf_on_the_real_checkpoint(llm, hf_smollm2):
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=0)
    outs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        ids = llm.get_tokenizer().encode(prompt)
        assert out.prompt_token_ids == ids
        ref_tokens, ref_logprobs = hf_greedy(hf_smollm2, ids, 32)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, prompt
        worst = max(abs(e[t].logprob - ref_logprobs[i][t].item())
                    for i, (t, e) in enumerate(zip(got.token_ids, got.logprobs)))
        assert worst < 1e-3
        assert got.text == llm.get_tokenizer().decode(ref_tokens, skip_special_tokens=True)


def test_chat_answers_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0.0, max_tokens=32))[0]
    assert "Paris" in out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"  # ended by <|im_end|>, the EOS
    assert out.prompt_token_ids[0] == 1  # one <|im_start|> from the template, no extra BOS
    assert out.prompt_token_ids.count(1) == 3


def test_no_bos_added_to_plain_prompts(llm):
    ids = llm.generate("hi", SamplingParams(max_tokens=1))[0].prompt_token_ids
    assert ids[0] != llm.get_tokenizer().bos_token_id
