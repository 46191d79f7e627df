"""Mixture-of-experts models (tiny random Mixtral and Qwen2-MoE) equal HF transformers:
greedy tokens identical and logprobs within 1e-3 (fp32, CPU), with chunked prefill."""
from __future__ import annotations

from tessera import LLM, SamplingParams
from tests.conftest import hf_greedy

PROMPTS = [[5, 17, 99, 3], list(range(20, 60)), [300, 7, 7, 150, 42, 8, 9]]


def test_moe_greedy_equals_hf(tiny_moe):
    arch, folder, hf_model = tiny_moe
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
              device="cpu")  # the fp32 CPU claim, also on a GPU machine
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=0))
    for p, out in zip(PROMPTS, outs):
        ref_tokens, ref_lps = hf_greedy(hf_model, p, 32)
        assert out.outputs[0].token_ids == ref_tokens, arch
        for i, (t, e) in enumerate(zip(ref_tokens, out.outputs[0].logprobs)):
            assert abs(e[t].logprob - ref_lps[i][t].item()) < 1e-3
