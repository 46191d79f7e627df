"""DraftPolicy (engine/spec_policy.py): how many drafts a request gets, from its
acceptance rate and the measured draft cost; none above the batch limit."""
from __future__ import annotations

from tessera.config import SpeculativeConfig
from tessera.engine.request import Request
from tessera.engine.spec_policy import DraftPolicy
from tessera.sampling_params import SamplingParams
from tessera.engine.protocol import ModelRunnerOutput
from tests.unit.scheduler_helpers import FILL, make_request, make_scheduler


def policy(**kw) -> DraftPolicy:
    return DraftPolicy(SpeculativeConfig(speculative_method="ngram", num_speculative_tokens=6,
                                         **kw))


def request(acceptance=None) -> Request:
    req = Request("r", [1, 2, 3], SamplingParams())
    req.acceptance = acceptance
    return req


def test_more_drafts_for_requests_whose_drafts_come_true():
    p = policy()
    p.note_draft_cost(0.1)  # a draft step costs a tenth of a verify step
    assert p.num_drafts(request(0.95), 1) == 6
    assert p.num_drafts(request(0.2), 1) == 1
    assert p.num_drafts(request(0.05), 1) == 0  # 1.05 tokens for 1.1 of the time: a loss
    assert 1 < p.num_drafts(request(0.7), 1) < 6
    p.note_draft_cost(0.5)  # expensive drafts: fewer of them
    assert p.num_drafts(request(0.7), 1) < policy().num_drafts(request(0.7), 1)
    free = policy()  # n-gram: drafting costs nothing, so the most that may come true
    assert free.num_drafts(request(0.3), 1) == 6


def test_running_rate_follows_the_verified_steps():
    req = request()
    for _ in range(20):
        DraftPolicy.note_verified(req, 4, 4)
    assert req.acceptance > 0.99
    for _ in range(20):
        DraftPolicy.note_verified(req, 4, 0)
    assert req.acceptance < 0.01


def test_no_drafts_above_the_batch_limit_and_fixed_k_without_adaptivity():
    assert policy(speculative_max_batch=8).num_drafts(request(0.9), 9) == 0
    assert policy(speculative_adaptive=False).num_drafts(request(0.01), 1) == 6


def test_the_scheduler_sends_each_requests_draft_count():
    sched = make_scheduler(block_size=4)
    sched.draft_policy = policy(speculative_max_batch=1)
    sched.add_request(make_request("a", 5, max_tokens=10))
    first = sched.schedule()
    assert first.num_drafts == {"a": 6}  # free (n-gram) drafts: all 6
    sched.update_from_output(first, ModelRunnerOutput({"a": [FILL]}, {}, {}))
    sched.add_request(make_request("b", 5, max_tokens=10))
    both = sched.schedule()
    assert len(both.num_scheduled_tokens) == 2
    assert both.num_drafts == {}  # two requests > speculative_max_batch 1


def test_requests_whose_drafts_do_not_pay_draft_only_to_probe():
    p = policy()
    p.note_draft_cost(0.5)  # a draft step costs half a verify step
    req = request(0.02)  # and almost none comes true
    asked = [p.num_drafts(req, 1) for _ in range(512)]
    probes = [i + 1 for i, k in enumerate(asked) if k]
    assert probes == [8, 16, 32, 64, 128, 256, 384, 512]  # backing off to every 128
    assert set(asked) == {0, 1}
    for _ in range(10):
        DraftPolicy.note_verified(req, 1, 1)  # the probes come true after all
    assert p.num_drafts(req, 1) > 1
