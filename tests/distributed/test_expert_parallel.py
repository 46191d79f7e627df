"""MoE models over 2 ranks (gloo, CPU): experts sliced by TP, and whole experts per rank
(expert parallelism), each give the greedy tokens of one process."""
from __future__ import annotations

import pytest

from tessera import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3], list(range(20, 50))]
PARAMS = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


@pytest.mark.parametrize("expert_parallel", [False, True])
def test_moe_over_two_ranks_equals_one(tiny_moe, expert_parallel):
    arch, folder, _ = tiny_moe
    one = LLM(folder, skip_tokenizer_init=True, num_blocks=64)
    ref = [o.outputs[0].token_ids for o in one.generate(
        [{"prompt_token_ids": p} for p in PROMPTS], PARAMS)]
    two = LLM(folder, skip_tokenizer_init=True, num_blocks=64, tensor_parallel_size=2,
              enable_expert_parallel=expert_parallel)
    try:
        got = [o.outputs[0].token_ids for o in two.generate(
            [{"prompt_token_ids": p} for p in PROMPTS], PARAMS)]
    finally:
        two.engine.executor.shutdown()
    assert got == ref, (arch, expert_parallel)
