"""Tensor parallelism on CPU (gloo, one worker process per rank): greedy tokens of TP=2
and TP=4 equal TP=1 on the same weights (fp32), KV heads replicated when there are fewer
than ranks; a worker killed mid-request makes the engine fail within a bounded time."""
from __future__ import annotations

import time

import pytest

from tessera import LLM, SamplingParams
from tessera.executor.multiproc import WorkerFailure
from tests.helpers.outputs import assert_same_greedy

PROMPTS = [[5, 17, 99, 3], list(range(20, 60)), [300, 7, 7, 150, 42]]
PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=0)


@pytest.fixture(scope="module")
def tp1_outputs(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16)
    return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)


@pytest.mark.parametrize("tp", [2, 4])  # 4 ranks > 2 KV heads: KV heads replicated
def test_tensor_parallel_equals_single_process(tiny_llama, tp1_outputs, tp):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
              tensor_parallel_size=tp)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)
        assert_same_greedy(tp1_outputs, outs)
        assert llm.engine.stats()["free_blocks"] == 64
    finally:
        llm.engine.executor.shutdown()


def test_killed_worker_fails_the_engine_quickly(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, tensor_parallel_size=2,
              collective_timeout_s=20)
    executor = llm.engine.executor
    llm.engine.add_request("r", {"prompt_token_ids": [1, 2, 3]},
                           SamplingParams(max_tokens=500, ignore_eos=True))
    llm.engine.step()
    executor._procs[1].kill()
    start = time.monotonic()
    with pytest.raises(WorkerFailure, match="worker"):
        while llm.engine.has_unfinished_requests():
            llm.engine.step()
    assert time.monotonic() - start < 30
    for proc in executor._procs:
        assert proc.wait(10) is not None  # every worker is gone, none left behind


def test_each_rank_holds_a_shard(tiny_llama):
    folder, _ = tiny_llama
    one = LLM(folder, skip_tokenizer_init=True, num_blocks=16)
    two = LLM(folder, skip_tokenizer_init=True, num_blocks=16, tensor_parallel_size=2)
    try:
        full = one.engine.executor.info.weight_gib
        shard = two.engine.executor.info.weight_gib
        assert 0.45 * full < shard < 0.55 * full  # every matrix, embedding and head split
    finally:
        two.engine.executor.shutdown()


def test_impossible_layouts_are_refused(tiny_llama):
    folder, _ = tiny_llama
    with pytest.raises(ValueError, match="does not divide the 4 attention heads"):
        LLM(folder, skip_tokenizer_init=True, tensor_parallel_size=3)
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        LLM(folder, skip_tokenizer_init=True, tensor_parallel_size=0)
    with pytest.raises(ValueError, match="pipeline_parallel_size 4 exceeds the model's 3 layers"):
        LLM(folder, skip_tokenizer_init=True, pipeline_parallel_size=4)
    with pytest.raises(ValueError, match="pp_layer_partition '1' must list 2"):
        LLM(folder, skip_tokenizer_init=True, pipeline_parallel_size=2, pp_layer_partition="1")


def test_kernel_switches_in_the_config_reach_every_worker(tiny_llama, tp1_outputs):
    """TP=2 worker processes build their models with the config's kernel section (here the
    Triton kernels, under the interpreter the workers inherit, the skinny GEMM forced on,
    q/k/v rotary fusion and PDL off), each reports what its layers run (no norm fusion
    over two ranks), and the tokens equal the reference path's."""
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
              tensor_parallel_size=2, kernel_backend="triton", skinny_gemm="always",
              qkv_rope=False, pdl=False)
    try:
        reported = [info.kernels for info in llm.engine.executor.worker_infos]
        assert reported == [{"ops": "triton", "skinny_gemm": "always", "qkv_rope": "off",
                             "norm_fusion": "off", "fused_moe": "auto", "pdl": "off"}] * 2
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)
        for ref, out in zip(tp1_outputs, outs):
            assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    finally:
        llm.engine.executor.shutdown()


def test_one_rank_in_a_worker_process_equals_this_process(tiny_llama, tp1_outputs):
    """distributed_executor_backend="mp" runs even one rank in a process of its own."""
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
              distributed_executor_backend="mp")
    try:
        assert type(llm.engine.executor).__name__ == "MultiprocExecutor"
        assert llm.engine.executor.info.kernels["ops"] == "reference"  # auto, on the CPU
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)
        for ref, out in zip(tp1_outputs, outs):
            assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    finally:
        llm.engine.executor.shutdown()
    with pytest.raises(ValueError, match="'uni' runs one rank"):
        LLM(folder, skip_tokenizer_init=True, tensor_parallel_size=2,
            distributed_executor_backend="uni")



def test_quantized_tensor_parallel_matches_single_process(tiny_llama):
    """int8 weights (the LM head's too: each rank quantizes its slice of the vocabulary)
    quantized shard by shard on each rank: the o and down projections' shards get their
    own per-row scales, so logprobs agree to int8's step, not exactly (the tiny model's
    greedy choices are near-ties, so its prompts' logprobs are compared: teacher-forced,
    no divergence can compound)."""
    folder, _ = tiny_llama
    options = dict(skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
                   quantization="int8", lm_head_quantization="int8")
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    one = LLM(folder, **options)
    ref = one.generate(prompts, params)
    llm = LLM(folder, tensor_parallel_size=2, **options)
    try:
        outs = llm.generate(prompts, params)
        for prompt, r, out in zip(PROMPTS, ref, outs):
            for tok, a, b in zip(prompt[1:], out.prompt_logprobs[1:], r.prompt_logprobs[1:]):
                assert abs(a[tok].logprob - b[tok].logprob) < 2e-2
        shard = llm.engine.executor.info.weight_bytes["int8"]
        whole = one.engine.executor.info.weight_bytes["int8"]
        assert 0.45 * whole < shard < 0.6 * whole  # each rank holds about half
    finally:
        llm.engine.executor.shutdown()


def test_speculative_decoding_under_tensor_parallelism(tiny_llama, tp1_outputs):
    """TP=2 with a draft (each rank holds a shard of it too) and sampled requests: greedy
    tokens equal TP=1's, and every rank drew the same drafts and tokens (the engine would
    fail otherwise: ranks verifying different drafts diverge in their KV)."""
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
              tensor_parallel_size=2, speculative_config=dict(
                  model=folder, num_speculative_tokens=3, speculative_adaptive=False))
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)
        assert [o.outputs[0].token_ids for o in outs] == [
            o.outputs[0].token_ids for o in tp1_outputs]
        sampled = SamplingParams(temperature=0.9, seed=5, max_tokens=16, ignore_eos=True)
        a = llm.generate({"prompt_token_ids": PROMPTS[1]}, sampled)[0].outputs[0].token_ids
        b = llm.generate({"prompt_token_ids": PROMPTS[1]}, sampled)[0].outputs[0].token_ids
        assert a == b and len(a) == 16  # seeded: reproducible
        stats = llm.engine.stats()
        assert stats["spec_accepted"] > 0 and stats["free_blocks"] == 64
    finally:
        llm.engine.executor.shutdown()
