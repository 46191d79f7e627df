"""The warm-up steps (worker/warm_up.py) and the aligned step inputs they rely on.

On the GPU the warm-up runs when the KV cache is made, so that serving compiles no Triton
kernel; on CPU nothing compiles, but the steps are the same, so here they are run by hand
on a tiny Llama: they must leave no request state, no in-flight step and no owned block
behind, and greedy output must still equal HF transformers'.
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


def test_warm_up_leaves_the_engine_as_it_found_it(tiny_llama):
    folder, hf_model = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, block_size=8)
    runner = llm.engine.core.executor.runner
    prompt = [5, 9, 17, 3, 11, 40, 2, 7]
    expected, _ = hf_greedy(hf_model, prompt, 12)
    assert warm_up(runner)
    assert not runner.states and not runner._in_flight
    stats = llm.engine.stats()
    assert stats["free_blocks"] == stats["num_blocks"]
    p = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": prompt}, {"prompt_token_ids": [3] * 30}], p)
    assert outs[0].outputs[0].token_ids == expected


def test_the_kernel_finder_sees_every_kernel_module():
    names = set(tessera_kernels())
    assert {"paged_decode_attention._decode_partial", "paged_decode_attention._decode_reduce",
            "paged_prefill_attention._prefill", "rms_norm._rms_norm", "skinny_gemm._skinny_gemm",
            "rotary_kv_write._rotary_kv", "silu_and_mul._silu_and_mul"} <= names
    assert "paged_decode_attention.load_kv_tile" not in names  # imported, not defined there
    if not torch.cuda.is_available():
        assert compiled_keys() == {}


def test_warm_up_needs_a_few_free_blocks(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=4, block_size=8)
    assert not warm_up(llm.engine.core.executor.runner)


def test_step_inputs_start_on_16_byte_boundaries():
    """Odd-length arrays are padded in the packed copy, so every view the kernels read is
    16-byte aligned (Triton compiles a variant per alignment)."""
    params = Params(max_tokens=4)
    states = {"a": RequestState("a", list(range(7)), 7, params, [0], 0, 0),
              "b": RequestState("b", list(range(3)), 3, params, [1], 2, 0),
              "c": RequestState("c", list(range(5)), 5, params, [2], 4, 0)}
    inputs = prepare_inputs(states, {"a": 7, "b": 1, "c": 1}, 8, torch.device("cpu"),
                            use_kernels=True)
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


@pytest.mark.gpu
def test_serving_compiles_no_kernel_after_the_warm_up(tiny_llama):
    """Once the engine is up (profiling pass, decode graphs, warm-up), a mixed workload of
    many prompt lengths and batch sizes meets no new Triton kernel variant."""
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, dtype="bfloat16", num_blocks=512,
              max_num_batched_tokens=256)
    before = compiled_keys()
    assert "paged_decode_attention._decode_partial" in before  # start-up compiled kernels
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 300) for _ in range(rng.randrange(1, 200))]}
               for _ in range(48)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randrange(1, 40), ignore_eos=True)
              for _ in prompts]
    llm.generate(prompts, params)  # all at once: mixed steps, decodes of many batch sizes
    for n in (1, 3, 17):  # small batches: the decode graphs and the skinny GEMM
        llm.generate(prompts[:n], params[:n])
    new = {name: set(keys) - set(before.get(name, [])) for name, keys in compiled_keys().items()}
    assert not any(new.values()), {name: len(keys) for name, keys in new.items() if keys}
