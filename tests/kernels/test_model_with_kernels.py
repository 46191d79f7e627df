"""The model path that CUDA takes (kernel_backend="triton": fused rotary + cache write;
decode sequences first, through the Triton decode kernel; prefill chunks through the
Triton prefill kernel) with a tiny Llama in float32: greedy tokens equal HF transformers
while chunked prefill and decodes mix. On CPU the kernels run under the interpreter; on a
GPU, natively."""
from __future__ import annotations

import torch

from tessera import LLM, SamplingParams
from tests.conftest import hf_greedy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_mixed_steps_with_the_decode_kernel_equal_hf(tiny_llama):
    folder, hf_model = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, block_size=8,
              max_num_batched_tokens=12, device=DEVICE, dtype="float32",
              kernel_backend="triton")  # the kernels, as on CUDA (CPU: interpreted)
    prompts = [[5, 17, 99, 3], list(range(20, 45)), [300, 7, 7, 150, 42]]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    for p, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf_model, p, 10)[0]


def test_verify_steps_as_decode_rows_equal_hf(tiny_llama):
    """Speculative decoding on the kernel path: a verify step's known token and drafts run
    as one-token decode rows (each seeing the rows before it, written in the same step),
    beside plain decodes and a prefill chunk; greedy tokens still equal HF's."""
    folder, hf_model = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, block_size=8,
              max_num_batched_tokens=16, device=DEVICE, dtype="float32",
              kernel_backend="triton", speculative_config=dict(
                  model=folder, num_speculative_tokens=3, speculative_adaptive=False))
    prompts = [[5, 17, 99, 3], list(range(20, 45))]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    for p, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf_model, p, 10)[0]
    stats = llm.engine.stats()
    assert stats["spec_accepted"] == stats["spec_drafted"] > 0
