"""Async scheduling: step N+1 is scheduled and submitted before step N's tokens are back.

The same requests must come out exactly as with one step at a time (greedy and seeded
sampling, stops, chunked prefill, preemption), with two steps really in flight, the
decode inputs fed from the device, no step wasted past max_tokens, and the KV pool whole
at the end.
"""
from __future__ import annotations

import pytest

from tessera import LLM, SamplingParams
from tessera.config import SchedulerConfig
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import ModelRunnerOutput
from tessera.engine.request import Request
from tessera.engine.scheduler import Scheduler

PROMPTS = [[3, 4, 5], [9] * 20, [1, 2], list(range(10, 47)), [7] * 5]


def run(folder, async_scheduling: bool, params, **kw):
    llm = LLM(folder, skip_tokenizer_init=True, block_size=8, max_num_batched_tokens=32,
              async_scheduling=async_scheduling, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    stats = llm.engine.stats()
    assert stats["free_blocks"] == stats["num_blocks"] and stats["running"] == 0
    return llm, [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]


@pytest.mark.parametrize("params", [
    [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (5, 17, 1, 30, 12)],
    [SamplingParams(temperature=0.9, top_k=20, seed=s, max_tokens=20, ignore_eos=True,
                    repetition_penalty=1.3 if s % 2 else 1.0, min_tokens=3)
     for s in range(5)],
    [SamplingParams(temperature=0, max_tokens=25, stop_token_ids=[t]) for t in range(5)],
], ids=["greedy", "seeded-penalties", "stop-ids"])
def test_async_outputs_equal_one_step_at_a_time(tiny_llama, params):
    folder, _ = tiny_llama
    llm, got = run(folder, True, params, num_blocks=64)
    _, want = run(folder, False, params, num_blocks=64)
    assert got == want
    assert llm.engine.core.max_in_flight == 2


def test_async_with_preemption_matches_and_frees_everything(tiny_llama):
    folder, _ = tiny_llama
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)] * len(PROMPTS)
    llm, got = run(folder, True, params, num_blocks=20)  # too few blocks: preemption
    _, want = run(folder, False, params, num_blocks=20)
    assert llm.engine.stats()["preemptions"] > 0
    assert got == want


def test_decode_inputs_come_from_the_device(tiny_llama):
    """The worker learns a token one step late: every decode after the first reads its
    input from the previous step's token tensor."""
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64)
    runner = llm.engine.core.executor.runner
    fed = []
    import tessera.worker.model_runner as mr
    prepare = mr.prepare_inputs

    def spy(*a, **k):
        inputs = prepare(*a, **k)
        fed.append(0 if inputs.feed_rows is None else inputs.feed_rows.numel())
        return inputs
    mr.prepare_inputs = spy
    try:
        llm.generate({"prompt_token_ids": [5, 6, 7]},
                     SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    finally:
        mr.prepare_inputs = prepare
    assert fed == [0, 1, 1, 1, 1, 1]  # prefill, then 5 decodes fed on the device
    assert not runner._in_flight


def test_scheduler_schedules_in_flight_requests_up_to_max_tokens():
    kv = KVCacheManager(32, 4)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64), kv, 128, schedule_in_flight=True)
    req = Request("a", [1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True))
    s.add_request(req)
    first = s.schedule()  # prefill: samples output 1
    second = s.schedule()  # decode of output 1, still unknown here: samples output 2
    assert first.num_scheduled_tokens == {"a": 3} and second.num_scheduled_tokens == {"a": 1}
    assert second.cached_requests[0].new_token_ids == []  # the worker has it on the device
    assert req.num_pending_tokens == 2 and req.num_computed_tokens == 4
    assert s.schedule().is_empty  # two tokens in flight reach max_tokens: nothing to waste
    s.update_from_output(first, ModelRunnerOutput({"a": [11]}, {}, {}))
    outs = s.update_from_output(second, ModelRunnerOutput({"a": [12]}, {}, {}))
    assert req.output_token_ids == [11, 12] and outs[0].finish_reason == "length"
    assert kv.num_free_blocks == 32


def test_scheduler_drops_the_in_flight_token_of_a_preempted_request():
    kv = KVCacheManager(2, 4)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64), kv, 128, schedule_in_flight=True)
    a = Request("a", [1, 2, 3, 4], SamplingParams(max_tokens=4, ignore_eos=True))
    b = Request("b", [4, 5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))
    s.add_request(a)
    s.add_request(b)
    first = s.schedule()  # both prefill (one block each)
    second = s.schedule()  # a needs a second block: b, in flight, is preempted
    assert second.preempted_request_ids == {"b"} and b.num_pending_tokens == 0
    s.update_from_output(first, ModelRunnerOutput({"a": [7], "b": [8]}, {}, {}))
    assert b.output_token_ids == [] and a.output_token_ids == [7]  # b's token dropped
    assert list(s.waiting) == [b]


def test_switching_async_scheduling_off_between_runs(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64)
    core = llm.engine.core
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    overlapped = llm.generate({"prompt_token_ids": [5, 6, 7]}, params)[0].outputs[0].token_ids
    llm.engine.add_request("busy", {"prompt_token_ids": [1, 2]}, params)
    with pytest.raises(RuntimeError, match="idle"):
        core.set_async_scheduling(False)
    llm.engine.abort_request(["busy"])
    core.set_async_scheduling(False)
    core.max_in_flight = 0
    serial = llm.generate({"prompt_token_ids": [5, 6, 7]}, params)[0].outputs[0].token_ids
    assert serial == overlapped
    assert core.pipeline_depth == 1 and core.max_in_flight <= 1  # one step at a time
