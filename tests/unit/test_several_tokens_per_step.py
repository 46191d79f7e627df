"""The token protocol's room for several tokens per request per step (speculative
decoding), driven with no model: a request's draft tokens are scheduled after its known
tokens and named in the SchedulerOutput; the step returns the accepted drafts plus one
token; rejected drafts roll the computed count back; a stop among the returned tokens cuts
the rest; the KV manager makes room for lookahead slots. With no drafts, one token per
step as before (the rest of tests/unit)."""
from __future__ import annotations

from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import ModelRunnerOutput
from tessera.engine.request import Request, RequestStatus
from tessera.sampling_params import SamplingParams
from tests.unit.scheduler_helpers import EOS, FILL, assert_no_leak, make_request, make_scheduler


def decoding(sched, rid="r", prompt_len=6, **params):
    """A request past its prefill: one step computed the prompt and sampled FILL."""
    sched.add_request(make_request(rid, prompt_len, **params))
    first = sched.schedule()
    sched.update_from_output(first, ModelRunnerOutput({rid: [FILL]}, {}, {}))
    return sched.requests[rid]


def test_drafts_are_scheduled_after_the_known_token_and_named():
    sched = make_scheduler(block_size=4)
    req = decoding(sched, max_tokens=20)
    assert (req.num_tokens, req.num_computed_tokens) == (7, 6)
    req.spec_token_ids = [11, 12, 13]
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"r": 4}  # the last sampled token + 3 drafts
    assert so.scheduled_spec_token_ids == {"r": [11, 12, 13]}
    assert so.cached_requests[0].new_token_ids == [FILL]  # known tokens only
    assert req.num_computed_tokens == 10
    assert len(sched.kv.block_ids("r")) * 4 >= 10  # room for every scheduled position


def test_accepted_drafts_come_out_together_and_rejected_ones_roll_back():
    sched = make_scheduler(block_size=4)
    req = decoding(sched, max_tokens=20)
    req.spec_token_ids = [11, 12, 13]
    so = sched.schedule()
    outs = sched.update_from_output(so, ModelRunnerOutput({"r": [11, 12, 40]}, {}, {}))
    assert outs[0].new_token_ids == [11, 12, 40]  # two drafts accepted, then a new token
    assert req.output_token_ids == [FILL, 11, 12, 40]
    assert req.num_computed_tokens == 9  # 10 scheduled, draft 13 rejected
    assert req.num_tokens - req.num_computed_tokens == 1 and not req.spec_token_ids
    so = sched.schedule()  # the next step computes the one unknown position, as ever
    assert so.num_scheduled_tokens == {"r": 1} and so.scheduled_spec_token_ids == {}
    assert so.cached_requests[0].new_token_ids == [40]


def test_a_stop_among_the_returned_tokens_cuts_the_rest():
    sched = make_scheduler(block_size=4)
    req = decoding(sched, max_tokens=20)
    req.spec_token_ids = [11, EOS, 13]
    so = sched.schedule()
    outs = sched.update_from_output(so, ModelRunnerOutput({"r": [11, EOS, 13]}, {}, {}))
    assert outs[0].new_token_ids == [11, EOS] and outs[0].finish_reason == "stop"
    assert req.status == RequestStatus.FINISHED_STOPPED
    assert_no_leak(sched)

    sched = make_scheduler(block_size=4)  # max_tokens reached inside the run
    req = decoding(sched, max_tokens=3)
    req.spec_token_ids = [11, 12, 13]
    outs = sched.update_from_output(sched.schedule(),
                                    ModelRunnerOutput({"r": [11, 12, 13, 14]}, {}, {}))
    assert outs[0].new_token_ids == [11, 12] and outs[0].finish_reason == "length"
    assert_no_leak(sched)


def test_a_short_budget_schedules_a_prefix_of_the_drafts():
    sched = make_scheduler(block_size=4, max_num_batched_tokens=3)
    req = decoding(sched, prompt_len=2, max_tokens=20)
    req.spec_token_ids = [11, 12, 13, 14]
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"r": 3}
    assert so.scheduled_spec_token_ids == {"r": [11, 12]}
    outs = sched.update_from_output(so, ModelRunnerOutput({"r": [11, 30]}, {}, {}))
    assert outs[0].new_token_ids == [11, 30]
    assert req.num_computed_tokens == req.num_tokens - 1  # draft 12 rolled back


def test_one_token_per_step_when_there_are_no_drafts():
    sched = make_scheduler(block_size=4)
    req = decoding(sched, max_tokens=20)
    so = sched.schedule()
    assert so.num_scheduled_tokens == {"r": 1} and so.scheduled_spec_token_ids == {}
    outs = sched.update_from_output(so, ModelRunnerOutput({"r": [FILL]}, {}, {}))
    assert outs[0].new_token_ids == [FILL] and req.num_computed_tokens == req.num_tokens - 1


def test_lookahead_slots_take_blocks_beyond_the_scheduled_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    req = Request("a", list(range(6)), SamplingParams())
    assert len(kv.allocate_slots(req, 6)) == 2  # 6 tokens: 2 blocks
    req.num_computed_tokens = 6
    assert kv.allocate_slots(req, 1, num_lookahead=0) == []  # slot 7 is in block 2
    assert len(kv.allocate_slots(req, 1, num_lookahead=3)) == 1  # slots up to 10: block 3
    assert kv.allocate_slots(req, 1, num_lookahead=100) is None  # more than the pool
    assert len(kv.block_ids("a")) == 3  # a refusal takes nothing


def test_drafts_stop_at_the_output_budget_and_the_context():
    sched = make_scheduler(block_size=4)
    req = decoding(sched, max_tokens=4)  # one output so far: room for 2 drafts + 1 token
    req.spec_token_ids = [11, 12, 13, 14, 15]
    so = sched.schedule()
    assert so.scheduled_spec_token_ids == {"r": [11, 12]} and so.num_scheduled_tokens["r"] == 3
    assert req.spec_token_ids == []  # the rest dropped: a proposer proposes anew each step

    sched = make_scheduler(block_size=4, max_model_len=9)
    req = decoding(sched, max_tokens=None)  # 7 tokens: positions 7 and 8 are the last
    req.spec_token_ids = [11, 12, 13, 14]
    so = sched.schedule()
    assert so.scheduled_spec_token_ids == {"r": [11, 12]}  # positions 7, 8 (< 9)


def test_the_model_runner_refuses_drafts_it_cannot_verify(tiny_llama):
    """Until speculative decoding brings its rejection sampler, a step with drafts is an
    error that says so, not tokens computed at the wrong positions."""
    import pytest

    from tessera import LLM
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=16, async_scheduling=False)
    llm.engine.add_request("r", {"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(max_tokens=8, ignore_eos=True))
    llm.engine.step()
    llm.engine.core.scheduler.requests["r"].spec_token_ids = [9, 9]
    with pytest.raises(NotImplementedError, match="draft tokens"):
        llm.engine.step()
