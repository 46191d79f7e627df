"""A fault inside an engine step costs the requests it touched, not the engine (issue 17).

Faults are injected into the tiny model's runner in this process:
- setting up one new request's state raises: that request ends with finish reason
  "error" (an incident id, no internals), the requests beside it in the same steps give
  exactly the tokens they give without the fault;
- a whole step raises: its requests end with "error", the engine steps on, and the
  next requests are answered as before;
- a device error (a CUDA error's text) is not isolated: it propagates, the engine stops.
After each, every KV block is free and nothing runs or waits.
"""
from __future__ import annotations

import pytest

from tessera import LLM, SamplingParams
from tessera.worker import model_runner
from tessera.worker.step_faults import is_device_failure

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [{"prompt_token_ids": [3, 4, 5]}, {"prompt_token_ids": [9] * 10},
           {"prompt_token_ids": [1, 2]}]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    folder, _ = tiny_llama
    return LLM(folder, skip_tokenizer_init=True, num_blocks=64, block_size=8,
               max_num_batched_tokens=64)


def assert_no_leak(llm):
    stats = llm.engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert stats["free_blocks"] == stats["num_blocks"], stats


def runner_of(llm):
    return llm.engine.core.executor.runner


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_a_fault_setting_up_one_request_fails_it_alone(tiny, monkeypatch):
    baseline = tokens(tiny.generate(PROMPTS, GREEDY))
    runner = runner_of(tiny)
    make_generator = runner._make_generator

    def faulty(seed):
        if seed == 666:
            raise KeyError("a bug reading this request's settings")
        return make_generator(seed)
    monkeypatch.setattr(runner, "_make_generator", faulty)
    bad = SamplingParams(max_tokens=12, temperature=1.0, seed=666)
    outs = tiny.generate([*PROMPTS, {"prompt_token_ids": [7, 8]}], [GREEDY] * 3 + [bad])
    assert tokens(outs[:3]) == baseline
    failed = outs[3].outputs[0]
    assert failed.finish_reason == "error" and failed.token_ids == []
    assert "incident" in failed.stop_reason and "a bug" not in failed.stop_reason
    assert_no_leak(tiny)
    assert not runner._dropped and "666" not in str(runner.states)
    monkeypatch.undo()
    assert tokens(tiny.generate(PROMPTS, GREEDY)) == baseline


def test_a_fault_in_a_step_fails_its_requests_and_the_engine_goes_on(tiny, monkeypatch):
    baseline = tokens(tiny.generate(PROMPTS, GREEDY))
    prepare = model_runner.prepare_inputs
    fired = []

    def faulty(states, scheduled, *args, **kwargs):
        if any(states[rid].params.seed == 667 for rid in scheduled) and not fired:
            fired.append(list(scheduled))
            raise ValueError("a bug preparing the inputs")
        return prepare(states, scheduled, *args, **kwargs)
    monkeypatch.setattr(model_runner, "prepare_inputs", faulty)
    engine = tiny.engine
    engine.add_request("early", PROMPTS[0], GREEDY.clone(max_tokens=40))
    for _ in range(3):
        engine.step()
    engine.add_request("bad", {"prompt_token_ids": [7, 8]},
                       SamplingParams(max_tokens=8, temperature=1.0, seed=667))
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0]
    assert fired and set(fired[0]) == {"early", "bad"}  # the step held both
    assert {rid: o.finish_reason for rid, o in finished.items()} == {"early": "error",
                                                                     "bad": "error"}
    assert "incident" in finished["bad"].stop_reason
    assert_no_leak(tiny)
    assert tokens(tiny.generate(PROMPTS, GREEDY)) == baseline  # the engine went on


def test_a_device_error_is_not_isolated(tiny_llama, monkeypatch):
    llm = LLM(tiny_llama[0], skip_tokenizer_init=True, num_blocks=16, block_size=8)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(model_runner, "prepare_inputs", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        llm.generate(PROMPTS[0], GREEDY)


def test_which_errors_are_the_devices():
    import torch
    assert is_device_failure(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_device_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_device_failure(KeyboardInterrupt())
    assert not is_device_failure(KeyError("request"))
    assert not is_device_failure(RuntimeError("shape mismatch in a request's settings"))
    assert not is_device_failure(ValueError("CUDA error"))  # only the device's RuntimeErrors
