"""The KV host tier on a tiny model (CPU): with a device cache too small for the histories,
evicted prefix blocks are copied to the host and back, outputs equal the run without the
tier, fewer prompt tokens are recomputed, and nothing leaks in either tier after aborts.
"""
from __future__ import annotations

import random

import pytest

from tessera import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
SAMPLED = SamplingParams(temperature=0.8, max_tokens=8, ignore_eos=True, seed=5)
SMALL_CACHE = dict(num_blocks=24, block_size=16)  # 384 tokens: less than the histories


def _conversations(turns: int = 3, count: int = 4) -> list[list[list[int]]]:
    """Per turn, each conversation's prompt: the last one plus new tokens."""
    rng = random.Random(0)
    prompts = [[1] + [rng.randrange(3, 380) for _ in range(100)] for _ in range(count)]
    out = []
    for _ in range(turns):
        out.append([list(p) for p in prompts])
        prompts = [p + [rng.randrange(3, 380) for _ in range(20)] for p in prompts]
    return out


def _chat(folder: str, params: SamplingParams, **kw):
    llm = LLM(folder, skip_tokenizer_init=True, **SMALL_CACHE, **kw)
    try:
        tokens = []
        for turn in _conversations():
            outs = llm.generate([{"prompt_token_ids": p} for p in turn], params)
            tokens.append([o.outputs[0].token_ids for o in outs])
        return tokens, llm.engine.stats(), llm.engine.core.kv
    finally:
        llm.engine.executor.shutdown()


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_host_tier_gives_the_same_tokens_and_saves_recomputation(tiny_llama, params):
    folder, _ = tiny_llama
    plain, plain_stats, _ = _chat(folder, params)
    tiered, stats, kv = _chat(folder, params, kv_offload_gb=0.002)
    assert tiered == plain
    assert stats["host_hit_tokens"] > 0 and stats["kv_bytes_to_device"] > 0
    assert stats["kv_bytes_to_host"] > 0
    assert stats["prompt_tokens"] < plain_stats["prompt_tokens"]  # recomputed less
    assert stats["prefix_hit_tokens"] > plain_stats["prefix_hit_tokens"]
    assert stats["free_blocks"] == stats["num_blocks"]
    assert kv.host.num_pinned_blocks == 0
    assert 0 < kv.host.num_used_blocks <= kv.host.num_blocks


def test_host_tier_under_tensor_parallel(tiny_llama):
    folder, _ = tiny_llama
    plain, _, _ = _chat(folder, GREEDY)
    tiered, stats, _ = _chat(folder, GREEDY, kv_offload_gb=0.002, tensor_parallel_size=2)
    assert tiered == plain and stats["host_hit_tokens"] > 0


def test_no_block_leaks_in_either_tier_after_aborts(tiny_llama):
    """Turns aborted part-way (chunked prefills, blocks in flight both ways) leave every
    device block free and no host block pinned; the tier then still gives exact outputs."""
    folder, _ = tiny_llama
    last = _conversations()[-1]
    reference = [o.outputs[0].token_ids for o in LLM(
        folder, skip_tokenizer_init=True, **SMALL_CACHE).generate(
        [{"prompt_token_ids": p} for p in last], GREEDY)]
    llm = LLM(folder, skip_tokenizer_init=True, kv_offload_gb=0.002,
              max_num_batched_tokens=48, **SMALL_CACHE)
    engine = llm.engine
    try:
        long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        for turn, prompts in enumerate(_conversations(turns=4)):
            for i, p in enumerate(prompts):
                engine.add_request(f"t{turn}-{i}", {"prompt_token_ids": p}, long)
            for _ in range(5 + 3 * turn):
                engine.step()
            engine.abort_request([f"t{turn}-{i}" for i in range(len(prompts))])
            while engine.has_unfinished_requests():
                engine.step()
            stats, kv = engine.stats(), engine.core.kv
            assert stats["free_blocks"] == stats["num_blocks"]
            assert kv.host.num_pinned_blocks == 0 and kv.swap_in == [] and kv.swap_out == []
        assert stats["kv_bytes_to_host"] > 0
        outs = llm.generate([{"prompt_token_ids": p} for p in last], GREEDY)
        assert [o.outputs[0].token_ids for o in outs] == reference
        assert engine.stats()["kv_bytes_to_device"] > 0  # found what the aborted turns left
    finally:
        engine.executor.shutdown()


def test_host_tier_needs_prefix_caching_and_no_draft_model(tiny_llama):
    from tessera.config import EngineConfig
    folder, _ = tiny_llama
    with pytest.raises(ValueError, match="kv_offload_gb needs enable_prefix_caching"):
        EngineConfig.from_kwargs(model=folder, kv_offload_gb=1, enable_prefix_caching=False)
    with pytest.raises(ValueError, match="draft model"):
        EngineConfig.from_kwargs(model=folder, kv_offload_gb=1, speculative_model=folder)
    with pytest.raises(ValueError, match="kv_offload_gb must be >= 0"):
        EngineConfig.from_kwargs(model=folder, kv_offload_gb=-2)
