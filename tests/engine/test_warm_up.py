"""The warm-up steps (worker/warm_up.py) and the aligned step inputs they rely on.

On the GPU the warm-up runs when the KV cache is made, so that serving compiles no Triton
kernel (the GPU test checks that at Llama-3-8B's widths, with and without graphs); on CPU
nothing compiles, but the steps are the same, so here they are run by hand on a tiny
Llama: they must leave no request state and no in-flight step behind, and greedy output
must still equal HF transformers' afterwards, in a small cache too.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tessera import LLM, SamplingParams
from tessera.kernels.jit_variants import compiled_keys, tessera_kernels
from tessera.sampling_params import SamplingParams as Params
from tessera.worker.input_batch import RequestState, prepare_inputs
from tessera.worker.warm_up import warm_up
from tests.conftest import hf_greedy


@pytest.mark.parametrize("num_blocks", [64, 4])  # 4: the warm-up's blocks wrap around
def test_warm_up_leaves_the_engine_as_it_found_it(tiny_llama, num_blocks):
    folder, hf_model = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=num_blocks, block_size=8)
    runner = llm.engine.core.executor.runner
    prompt = [5, 9, 17, 3, 11, 40, 2, 7]
    expected, _ = hf_greedy(hf_model, prompt, 12)
    assert warm_up(runner)  # on CPU no graphs: the eager decode phases run too
    assert not runner.states and not runner._in_flight
    p = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": prompt}, {"prompt_token_ids": [3] * 14}], p)
    assert outs[0].outputs[0].token_ids == expected
    stats = llm.engine.stats()
    assert stats["free_blocks"] == stats["num_blocks"]


def test_the_kernel_finder_sees_every_kernel_module():
    names = set(tessera_kernels())
    assert {"paged_decode_attention._decode_partial", "paged_decode_attention._decode_reduce",
            "paged_prefill_attention._prefill", "rms_norm._rms_norm", "skinny_gemm._skinny_gemm",
            "rotary_kv_write._rotary_kv", "silu_and_mul._silu_and_mul"} <= names
    assert "paged_decode_attention.load_kv_tile" not in names  # imported, not defined there
    if not torch.cuda.is_available():
        assert compiled_keys() == {}


def test_warm_up_skips_a_context_of_a_few_tokens(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=8, block_size=8, max_model_len=5)
    assert not warm_up(llm.engine.core.executor.runner)


def test_step_inputs_start_on_16_byte_boundaries():
    """Odd-length arrays are padded in the packed copy, so every view the kernels read is
    16-byte aligned (Triton compiles a variant per alignment)."""
    params = Params(max_tokens=4)
    states = {"a": RequestState("a", list(range(7)), 7, params, [0], 0, 0),
              "b": RequestState("b", list(range(3)), 3, params, [1], 2, 0),
              "c": RequestState("c", list(range(5)), 5, params, [2], 4, 0)}
    inputs = prepare_inputs(states, {"a": 7, "b": 1, "c": 1}, 8, torch.device("cpu"),
                            decodes_first=True)
    views = [inputs.input_ids, inputs.positions, inputs.meta.slot_mapping,
             inputs.meta.decode_block_tables, inputs.meta.decode_seq_lens,
             inputs.meta.ragged.block_tables, inputs.meta.ragged.seq_lens,
             inputs.meta.ragged.query_start, inputs.meta.ragged.token_seq_idx]
    assert all(v.data_ptr() % 16 == 0 for v in views)
    assert inputs.input_ids.tolist() == [2, 4] + list(range(7))  # decodes first
    assert inputs.positions.tolist() == [2, 4] + list(range(7))
    assert inputs.meta.decode_seq_lens.tolist() == [3, 5]
    assert inputs.meta.ragged.query_start.tolist() == [0, 7]
    assert np.array_equal(inputs.meta.slot_mapping.numpy(), [10, 20] + list(range(7)))


EIGHT_B_WIDTHS = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=2048,
                      rope_theta=500000.0, num_hidden_layers=2)


@pytest.mark.gpu
@pytest.mark.parametrize("enforce_eager", [False, True])
def test_serving_compiles_no_kernel_after_start_up(tmp_path, enforce_eager):
    """Llama-3-8B's widths (2 layers, random weights), so the weights' kernel variants
    differ as in the real model. Once the engine is up (graphs, warm-up; the profiling
    pass skipped by a fixed cache size), lone prompts of 20, 16 and 1 tokens, a mixed
    workload of 48 prompt lengths, batches of 1/3/17 and sampled requests with logprobs
    meet no new Triton variant."""
    import transformers
    config = transformers.LlamaConfig(**EIGHT_B_WIDTHS)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(tmp_path))
    llm = LLM(str(tmp_path), load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
              num_blocks=2048, max_num_batched_tokens=512, enforce_eager=enforce_eager)
    before = compiled_keys()
    assert "paged_decode_attention._decode_partial" in before  # start-up compiled kernels
    rng = random.Random(0)
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    for n in (20, 16, 1):
        llm.generate({"prompt_token_ids": [7] * n}, greedy)
    llm.generate([{"prompt_token_ids": [9] * 50}] * 6, greedy)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 300) for _ in range(rng.randrange(1, 200))]}
               for _ in range(48)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randrange(1, 40), ignore_eos=True)
              for _ in prompts]
    llm.generate(prompts, params)  # all at once: mixed steps, decodes of many batch sizes
    for n in (1, 3, 17):
        llm.generate(prompts[:n], params[:n])
    sampled = [SamplingParams(temperature=0.8, top_k=40, seed=i, max_tokens=6, logprobs=2,
                              ignore_eos=True) for i in range(3)]
    llm.generate(prompts[:3], sampled)  # the sampler: float32 logits and their argmax
    new = {name: set(keys) - set(before.get(name, [])) for name, keys in compiled_keys().items()}
    assert not any(new.values()), {name: len(keys) for name, keys in new.items() if keys}


@pytest.mark.gpu
def test_a_draft_model_compiles_nothing_after_start_up(tmp_path):
    """Speculative decoding with a draft of other widths (Llama-3.2-1B's: head_dim 64):
    its catch-up (short and long), draft steps and the verify steps' decode rows meet no
    new variant once the engine is up, as drafts pay off, stop and probe."""
    import transformers
    target, draft = str(tmp_path / "target"), str(tmp_path / "draft")
    for folder, widths in ((target, EIGHT_B_WIDTHS), (draft, dict(
            EIGHT_B_WIDTHS, hidden_size=2048, intermediate_size=8192, head_dim=64))):
        config = transformers.LlamaConfig(**widths)
        config.architectures = ["LlamaForCausalLM"]
        config.save_pretrained(folder)
    llm = LLM(target, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
              num_blocks=2048, max_num_batched_tokens=512, speculative_config=dict(
                  model=draft, num_speculative_tokens=4))
    before = compiled_keys()
    rng = random.Random(1)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 300) for _ in range(rng.randrange(1, 200))]}
               for _ in range(12)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randrange(1, 60), ignore_eos=True)
              for _ in prompts]
    for n in (1, 3, 12):
        llm.generate(prompts[:n], params[:n])
    llm.generate(prompts[:2], [SamplingParams(temperature=0.8, seed=i, max_tokens=20,
                                              ignore_eos=True) for i in range(2)])
    assert llm.engine.stats()["spec_drafted"] > 0
    new = {name: set(keys) - set(before.get(name, [])) for name, keys in compiled_keys().items()}
    assert not any(new.values()), {name: sorted(keys) for name, keys in new.items() if keys}
