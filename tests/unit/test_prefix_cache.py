"""Prefix reuse in the KV cache, with no model: the scheduler and a fake worker.

A request whose leading full blocks match blocks already computed (running or freed but
not yet evicted) starts with those tokens computed and shares the blocks; eviction
takes the least recently freed; the last prompt token is always computed.
"""
from __future__ import annotations

from tessera.engine.kv_cache.block_pool import BlockPool, prefix_hash
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import ModelRunnerOutput
from tessera.engine.request import Request
from tessera.engine.scheduler import Scheduler
from tessera.config import SchedulerConfig
from tessera.sampling_params import SamplingParams


def sched(num_blocks=32, block_size=4, budget=64) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_batched_tokens=budget),
                     KVCacheManager(num_blocks, block_size, True), 1024)


def req(rid, tokens, max_tokens=2, **kw) -> Request:
    return Request(rid, list(tokens), SamplingParams(max_tokens=max_tokens, **kw), (2,))


def step(s: Scheduler):
    out = s.schedule()
    sampled = {rid: [7] for rid in out.num_scheduled_tokens  # computed counts include the step
               if s.requests[rid].num_computed_tokens == s.requests[rid].num_tokens}
    s.update_from_output(out, ModelRunnerOutput(sampled, {}, {}))
    return out


def run(s: Scheduler):
    outs = []
    while s.has_unfinished():
        outs.append(step(s))
    return outs


def test_hash_chains_depend_on_the_whole_prefix():
    a = prefix_hash(None, [1, 2, 3, 4])
    assert prefix_hash(a, [5, 6]) != prefix_hash(prefix_hash(None, [9, 2, 3, 4]), [5, 6])
    assert prefix_hash(None, [1, 2, 3, 4]) == a
    assert prefix_hash(None, [12, 3]) != prefix_hash(None, [1, 23])


def test_second_request_reuses_finished_prefix():
    s = sched()
    prompt = list(range(100, 118))  # 18 tokens: 4 full blocks of 4
    s.add_request(req("a", prompt))
    run(s)
    s.add_request(req("b", prompt + [1, 2]))
    first = s.schedule()
    assert first.new_requests[0].num_computed_tokens == 16  # 4 cached blocks
    assert first.num_scheduled_tokens["b"] == 4  # only the rest is computed
    assert s.kv.hit_tokens == 16 and s.kv.query_tokens == 18 + 20


def test_identical_prompt_keeps_the_last_token_to_compute():
    s = sched()
    prompt = list(range(100, 116))  # exactly 4 blocks
    s.add_request(req("a", prompt))
    run(s)
    s.add_request(req("b", prompt))
    out = s.schedule()
    assert out.num_scheduled_tokens["b"] >= 1
    assert out.new_requests[0].num_computed_tokens == 12  # the last block is recomputed


def test_running_requests_share_blocks_and_free_cleanly():
    s = sched(num_blocks=16)
    prompt = list(range(200, 213))
    s.add_request(req("a", prompt, max_tokens=6))
    step(s)  # a's prompt is computed and its full blocks registered
    s.add_request(req("b", prompt, max_tokens=6))
    step(s)
    shared = set(s.kv.block_ids("a")) & set(s.kv.block_ids("b"))
    assert len(shared) == 3 and all(s.kv.pool.ref_count(b) == 2 for b in shared)
    run(s)
    assert s.kv.num_free_blocks == 16


def test_prompt_logprobs_requests_do_not_use_the_cache():
    s = sched()
    prompt = list(range(100, 118))
    s.add_request(req("a", prompt))
    run(s)
    s.add_request(req("b", prompt, prompt_logprobs=1))
    assert s.schedule().new_requests[0].num_computed_tokens == 0


def test_eviction_takes_least_recently_freed_and_forgets_hash():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.register(a, b"A")
    pool.register(b, b"B")
    pool.free([b])
    pool.free([a])
    assert pool.cached == {b"A": a, b"B": b}
    (taken,) = pool.allocate(1)
    assert taken == b and b"B" not in pool.cached and pool.cached[b"A"] == a
    pool.touch([a])  # a cached free block comes back into use
    assert pool.ref_count(a) == 1 and pool.num_free_blocks == 0


def test_hits_that_cannot_fit_take_nothing():
    s = sched(num_blocks=5, budget=64)
    prompt = list(range(100, 117))  # 17 tokens -> 5 blocks
    s.add_request(req("a", prompt, max_tokens=1))
    run(s)
    s.add_request(req("x", list(range(300, 310)), max_tokens=9))  # evicts some of a's blocks
    step(s)
    s.add_request(req("b", prompt, max_tokens=1))
    out = step(s)  # b cannot be admitted while x runs: nothing may be held for it
    assert "b" not in out.num_scheduled_tokens
    run(s)
    assert s.kv.num_free_blocks == 5
