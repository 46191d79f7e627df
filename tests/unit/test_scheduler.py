"""Unit tests for the token-budget Scheduler, driven with no model at all.

`FakeWorker` plays the model runner: it takes each SchedulerOutput, "computes" the
scheduled tokens, samples a token for every request that the step brings level
(computed before the step + scheduled == num_tokens; the scheduler advances
num_computed_tokens when it schedules) and feeds a ModelRunnerOutput back to
`update_from_output`. Every step it also checks the invariants of the one scheduling
rule (budget, blocks cover the scheduled tokens, only the newest running requests are
preempted).
"""
from __future__ import annotations

import random


from tessera.engine.request import RequestStatus

from tests.unit.scheduler_helpers import (FILL, FakeWorker, assert_no_leak, make_request,
                                          make_scheduler)

# -- the token budget and the order of service -----------------------------------------

def test_token_budget_respected_every_step_and_all_finish():
    rng = random.Random(0)
    sched = make_scheduler(num_blocks=256, max_num_batched_tokens=16)
    lengths = {}
    for i in range(12):
        lengths[f"r{i}"] = rng.randint(1, 40)
        sched.add_request(make_request(f"r{i}", lengths[f"r{i}"], max_tokens=5))
    w = FakeWorker(sched)
    w.run()
    totals = [so.total_num_scheduled_tokens for so, _ in w.steps]
    assert max(totals) <= 16
    assert max(totals) == 16  # the budget is actually used while there is work
    # Every prompt token plus every output but the last is computed exactly once.
    assert sum(totals) == sum(n + 5 - 1 for n in lengths.values())
    assert all(len(w.tokens[rid]) == 5 for rid in lengths)
    assert all(w.finish[rid][0] == "length" for rid in lengths)
    assert_no_leak(sched)


def test_single_request_prefill_then_one_token_per_step():
    sched = make_scheduler(max_num_batched_tokens=32)
    sched.add_request(make_request("a", 10, max_tokens=3))
    w = FakeWorker(sched)
    w.run()
    assert [so.num_scheduled_tokens for so, _ in w.steps] == [{"a": 10}, {"a": 1}, {"a": 1}]
    assert w.tokens["a"] == [FILL] * 3
    assert w.finish["a"] == ("length", None)


def test_running_requests_are_served_before_waiting_ones():
    sched = make_scheduler(max_num_batched_tokens=8)
    sched.add_request(make_request("a", 30, max_tokens=2))
    w = FakeWorker(sched)
    so, _ = w.step()
    assert so.num_scheduled_tokens == {"a": 8}
    sched.add_request(make_request("b", 4, max_tokens=2))
    # a still lacks 22 tokens: it takes the whole budget; b waits although it arrived.
    for expected_a in (8, 8):
        so, _ = w.step()
        assert so.num_scheduled_tokens == {"a": expected_a}
        assert [r.request_id for r in sched.waiting] == ["b"]
    so, _ = w.step()  # a needs its last 6; b gets what is left
    assert list(so.num_scheduled_tokens.items()) == [("a", 6), ("b", 2)]
    assert [n.request_id for n in so.new_requests] == ["b"]


def test_decode_of_running_request_is_scheduled_first_in_the_batch():
    sched = make_scheduler(max_num_batched_tokens=4)
    sched.add_request(make_request("a", 2, max_tokens=10))
    w = FakeWorker(sched)
    w.step()
    sched.add_request(make_request("b", 20, max_tokens=1))
    so, _ = w.step()
    assert list(so.num_scheduled_tokens.items()) == [("a", 1), ("b", 3)]


def test_chunked_prefill_with_continuous_batching_of_decodes():
    sched = make_scheduler(max_num_batched_tokens=8)
    sched.add_request(make_request("a", 2, max_tokens=20))
    sched.add_request(make_request("b", 2, max_tokens=20))
    w = FakeWorker(sched)
    so, _ = w.step()
    assert so.num_scheduled_tokens == {"a": 2, "b": 2}
    sched.add_request(make_request("c", 20, max_tokens=2))  # joins while a and b decode
    chunks = []
    for _ in range(4):
        so, outs = w.step()
        n = so.num_scheduled_tokens
        assert n["a"] == 1 and n["b"] == 1  # decodes continue every step
        chunks.append(n["c"])
        got = {o.request_id for o in outs if o.new_token_ids}
        assert {"a", "b"} <= got
        if len(chunks) < 4:
            assert "c" not in got  # no token for c while its prompt is being prefilled
    assert chunks == [6, 6, 6, 2]
    assert w.tokens["c"] == [FILL]  # the step that finished the prefill sampled one token
    assert sched.requests["c"].num_computed_tokens == 20
    w.run()
    assert len(w.tokens["c"]) == 2 and len(w.tokens["a"]) == 20
    assert_no_leak(sched)


def test_new_request_data_only_once_then_cached_diffs():
    sched = make_scheduler(max_num_batched_tokens=4, block_size=4)
    sched.add_request(make_request("a", 10, max_tokens=3))
    w = FakeWorker(sched)
    so, _ = w.step()
    assert [n.request_id for n in so.new_requests] == ["a"]
    assert so.new_requests[0].token_ids == list(range(100, 110))
    assert so.new_requests[0].num_computed_tokens == 0
    assert len(so.new_requests[0].block_ids) == 1
    so, _ = w.step()
    assert so.new_requests == []
    assert [(c.request_id, len(c.new_block_ids)) for c in so.cached_requests] == [("a", 1)]


def test_max_num_seqs_respected():
    sched = make_scheduler(max_num_batched_tokens=100, max_num_seqs=2)
    for i in range(5):
        sched.add_request(make_request(f"r{i}", 3, max_tokens=3))
    w = FakeWorker(sched)
    so, _ = w.step()
    assert list(so.num_scheduled_tokens) == ["r0", "r1"]  # budget is ample, seqs are not
    assert len(sched.running) == 2 and len(sched.waiting) == 3
    while sched.has_unfinished():
        so, _ = w.step()
        assert len(so.num_scheduled_tokens) <= 2
        assert len(sched.running) <= 2
    assert all(len(w.tokens[f"r{i}"]) == 3 for i in range(5))
    assert_no_leak(sched)


def test_fcfs_admission_and_finish_order():
    sched = make_scheduler(max_num_batched_tokens=100, max_num_seqs=1)
    ids = [f"r{i}" for i in range(6)]
    for rid in ids:
        sched.add_request(make_request(rid, 5, max_tokens=2))
    w = FakeWorker(sched)
    w.run()
    assert w.finish_order == ids


def test_fcfs_under_a_small_token_budget():
    sched = make_scheduler(max_num_batched_tokens=5)
    ids = [f"r{i}" for i in range(6)]
    for rid in ids:
        sched.add_request(make_request(rid, 7, max_tokens=1))
    w = FakeWorker(sched)
    w.run()
    first = [w.first_scheduled_step[rid] for rid in ids]
    assert first == sorted(first)
    assert first[0] < first[-1]
    assert w.finish_order == ids


# -- preemption --------------------------------------------------------------------------

def test_preemption_takes_the_newest_running_request_and_requeues_it_first():
    # block_size 4, 5 blocks. a, b: 4-token prompts (1 block); c: 5 tokens (2 blocks).
    sched = make_scheduler(num_blocks=5, block_size=4, max_num_batched_tokens=64)
    for rid, n in (("a", 4), ("b", 4), ("c", 5)):
        sched.add_request(make_request(rid, n, max_tokens=6))
    w = FakeWorker(sched)
    so, _ = w.step()
    assert so.num_scheduled_tokens == {"a": 4, "b": 4, "c": 5}
    assert sched.kv.num_free_blocks == 1
    sched.add_request(make_request("d", 1, max_tokens=1))  # waiting behind the others

    # a takes the last free block; b then finds none, so c (newest) is preempted.
    so, outs = w.step()
    assert so.preempted_request_ids == {"c"}
    assert so.num_scheduled_tokens == {"a": 1, "b": 1}  # no admissions in a preempting step
    c = next(r for r in sched.waiting if r.request_id == "c")
    assert [r.request_id for r in sched.waiting] == ["c", "d"]  # front of the queue
    assert c.status == RequestStatus.PREEMPTED
    assert c.num_computed_tokens == 0
    assert c.num_preemptions == 1 and sched.num_preemptions == 1
    assert sched.kv.block_ids("c") == []
    assert c.output_token_ids == [FILL]  # its output so far is kept
    assert [r.request_id for r in sched.running] == ["a", "b"]
    assert sched.kv.num_free_blocks == 1

    w.run()
    # c is recomputed from scratch with its earlier output, then finishes normally.
    resumed = [n for so, _ in w.steps for n in so.new_requests if n.request_id == "c"][-1]
    assert resumed.num_computed_tokens == 0
    assert resumed.token_ids[:5] == list(range(100, 105))
    assert len(resumed.token_ids) > 5  # prompt + the outputs produced before preemption
    for rid in "abc":
        assert len(w.tokens[rid]) == 6
        assert w.finish[rid] == ("length", None)
    assert len(w.tokens["d"]) == 1
    assert_no_leak(sched)


def test_running_request_preempts_itself_when_it_is_the_newest():
    sched = make_scheduler(num_blocks=3, block_size=4, max_num_batched_tokens=64)
    sched.add_request(make_request("a", 4, max_tokens=3))
    sched.add_request(make_request("b", 4, max_tokens=3))
    w = FakeWorker(sched)
    w.step()  # a: 1 block, b: 1 block, 1 free; both now have 5 tokens
    so, _ = w.step()  # a takes the free block; b (newest) must give way
    assert so.preempted_request_ids == {"b"}
    assert so.num_scheduled_tokens == {"a": 1}
    assert sched.waiting[0].request_id == "b"
    w.run()
    assert len(w.tokens["a"]) == 3 and len(w.tokens["b"]) == 3
    assert_no_leak(sched)


def test_many_requests_with_a_tight_pool_all_finish_with_right_lengths():
    rng = random.Random(1)
    sched = make_scheduler(num_blocks=12, block_size=4, max_num_batched_tokens=24)
    want = {}
    for i in range(15):
        want[f"r{i}"] = rng.randint(1, 12)
        sched.add_request(make_request(f"r{i}", rng.randint(1, 20), max_tokens=want[f"r{i}"]))
    w = FakeWorker(sched)
    w.run()
    assert sched.num_preemptions > 0
    assert {rid: len(t) for rid, t in w.tokens.items()} == want
    assert all(w.finish[rid][0] == "length" for rid in want)
    assert_no_leak(sched)
