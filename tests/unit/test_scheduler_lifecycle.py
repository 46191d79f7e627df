"""Scheduler, no model: stop conditions, aborts and finished ids (no leaked block), and
admission limits (bounded queue, oversized or duplicate requests)."""
from __future__ import annotations

import random

import pytest

from tessera.engine.protocol import ModelRunnerOutput
from tessera.engine.request import Request, RequestStatus
from tessera.engine.scheduler import QueueFullError

from tests.unit.scheduler_helpers import (EOS, FILL, FakeWorker, assert_no_leak, make_request,
                                          make_scheduler)

# -- stop conditions ---------------------------------------------------------------------

def _run_one(req: Request, tokens: list[int], max_model_len: int = 1024) -> FakeWorker:
    """Runs one request; the worker emits `tokens` in order (then FILL)."""
    sched = make_scheduler(max_model_len=max_model_len)
    sched.add_request(req)
    w = FakeWorker(sched, lambda r: tokens[r.num_output_tokens]
                   if r.num_output_tokens < len(tokens) else FILL)
    w.run()
    assert_no_leak(sched)
    return w


def test_max_tokens_finishes_with_length():
    w = _run_one(make_request("a", 3, max_tokens=5), [])
    assert w.tokens["a"] == [FILL] * 5
    assert w.finish["a"] == ("length", None)


def test_eos_finishes_with_stop():
    w = _run_one(make_request("a", 3, max_tokens=10), [5, 6, EOS, 8])
    assert w.tokens["a"] == [5, 6, EOS]
    assert w.finish["a"] == ("stop", None)


def test_ignore_eos_keeps_going_to_max_tokens():
    w = _run_one(make_request("a", 3, max_tokens=5, ignore_eos=True), [EOS] * 5)
    assert w.tokens["a"] == [EOS] * 5
    assert w.finish["a"] == ("length", None)


def test_any_of_several_eos_ids_stops():
    req = make_request("a", 3, eos=(2, 3), max_tokens=10)
    w = _run_one(req, [5, 3, 9])
    assert w.tokens["a"] == [5, 3]
    assert w.finish["a"] == ("stop", None)


def test_stop_token_id_finishes_with_stop_and_reports_the_id():
    req = make_request("a", 3, max_tokens=10, stop_token_ids=[42, 43])
    w = _run_one(req, [5, 43, 42])
    assert w.tokens["a"] == [5, 43]
    assert w.finish["a"] == ("stop", 43)


def test_stop_token_id_applies_even_with_ignore_eos():
    req = make_request("a", 3, max_tokens=10, stop_token_ids=[42], ignore_eos=True)
    w = _run_one(req, [EOS, 42])
    assert w.tokens["a"] == [EOS, 42]
    assert w.finish["a"] == ("stop", 42)


def test_min_tokens_suppresses_eos_finish():
    req = make_request("a", 3, max_tokens=10, min_tokens=3)
    w = _run_one(req, [EOS, EOS, EOS, EOS])
    # eos at outputs 1 and 2 does not finish; the third output reaches min_tokens.
    assert w.tokens["a"] == [EOS, EOS, EOS]
    assert w.finish["a"] == ("stop", None)


def test_min_tokens_suppresses_stop_token_finish():
    req = make_request("a", 3, max_tokens=10, min_tokens=4, stop_token_ids=[42])
    w = _run_one(req, [42, 42, 42, 5, 42])
    assert w.tokens["a"] == [42, 42, 42, 5, 42]
    assert w.finish["a"] == ("stop", 42)


def test_max_tokens_wins_when_min_tokens_equals_it():
    req = make_request("a", 3, max_tokens=3, min_tokens=3)
    w = _run_one(req, [5, 5, 5])
    assert w.finish["a"] == ("length", None)


def test_max_model_len_ends_with_length():
    req = make_request("a", 6, max_tokens=None)
    w = _run_one(req, [], max_model_len=10)
    assert len(w.tokens["a"]) == 4  # 6 prompt + 4 output == max_model_len
    assert w.finish["a"] == ("length", None)


def test_max_model_len_caps_a_larger_max_tokens():
    req = make_request("a", 6, max_tokens=100)
    w = _run_one(req, [], max_model_len=9)
    assert len(w.tokens["a"]) == 3
    assert w.finish["a"] == ("length", None)


# -- abort, finished ids, leaks ----------------------------------------------------------

def test_abort_waiting_request():
    sched = make_scheduler(max_num_seqs=1)
    sched.add_request(make_request("a", 4, max_tokens=5))
    sched.add_request(make_request("b", 4, max_tokens=5))
    w = FakeWorker(sched)
    w.step()
    assert [r.request_id for r in sched.waiting] == ["b"]
    aborted = sched.abort(["b"])
    assert [r.request_id for r in aborted] == ["b"]
    assert aborted[0].status == RequestStatus.FINISHED_ABORTED
    assert aborted[0].finish_reason == "abort"
    assert list(sched.waiting) == [] and "b" not in sched.requests
    so, _ = w.step()
    assert "b" in so.finished_request_ids
    assert "b" not in so.num_scheduled_tokens
    w.run()
    assert "b" not in w.tokens
    assert_no_leak(sched)


def test_abort_running_request_frees_its_blocks():
    sched = make_scheduler(num_blocks=20, block_size=4)
    sched.add_request(make_request("a", 10, max_tokens=50))
    sched.add_request(make_request("b", 6, max_tokens=50))
    w = FakeWorker(sched)
    w.step()
    w.step()
    held_a = len(sched.kv.block_ids("a"))
    assert held_a == 3
    free_before = sched.kv.num_free_blocks
    sched.abort(["a"])
    assert sched.kv.num_free_blocks == free_before + held_a
    assert sched.kv.block_ids("a") == []
    assert [r.request_id for r in sched.running] == ["b"]
    so, _ = w.step()
    assert so.finished_request_ids == {"a"}
    assert set(so.num_scheduled_tokens) == {"b"}
    sched.abort(["b"])
    assert not sched.has_unfinished()
    assert_no_leak(sched)


def test_abort_while_the_step_runs_drops_its_output():
    sched = make_scheduler()
    sched.add_request(make_request("a", 4, max_tokens=5))
    so = sched.schedule()
    sched.abort(["a"])
    outs = sched.update_from_output(so, ModelRunnerOutput({"a": [FILL]}, {}, {}))
    assert outs == []
    assert_no_leak(sched)
    assert sched.schedule().finished_request_ids == {"a"}


def test_abort_of_a_preempted_request():
    sched = make_scheduler(num_blocks=3, block_size=4, max_num_batched_tokens=64)
    sched.add_request(make_request("a", 4, max_tokens=3))
    sched.add_request(make_request("b", 4, max_tokens=3))
    w = FakeWorker(sched)
    w.step()
    so, _ = w.step()
    assert so.preempted_request_ids == {"b"}
    assert [r.request_id for r in sched.abort(["b"])] == ["b"]
    assert [r.request_id for r in sched.waiting] == []
    w.run()
    assert_no_leak(sched)


def test_abort_unknown_or_finished_ids_is_a_no_op():
    sched = make_scheduler()
    sched.add_request(make_request("a", 2, max_tokens=1))
    w = FakeWorker(sched)
    w.run()
    assert sched.abort(["a", "nope"]) == []
    assert_no_leak(sched)


def test_finished_ids_are_reported_once_in_the_next_schedule_output():
    sched = make_scheduler()
    sched.add_request(make_request("a", 3, max_tokens=1))
    sched.add_request(make_request("b", 3, max_tokens=3))
    w = FakeWorker(sched)
    so, outs = w.step()
    assert so.finished_request_ids == set()
    assert {o.request_id for o in outs if o.finished} == {"a"}
    so, _ = w.step()
    assert so.finished_request_ids == {"a"}
    so, _ = w.step()
    assert so.finished_request_ids == set()  # reported once only
    assert w.finish["b"][0] == "length"
    so = sched.schedule()
    assert so.finished_request_ids == {"b"}
    assert so.is_empty


def test_mixed_finishes_and_aborts_leave_no_block_behind():
    rng = random.Random(2)
    sched = make_scheduler(num_blocks=16, block_size=4, max_num_batched_tokens=12)
    ids = [f"r{i}" for i in range(20)]
    for rid in ids:
        sched.add_request(make_request(rid, rng.randint(1, 15), max_tokens=rng.randint(1, 8),
                                       stop_token_ids=[9]))
    w = FakeWorker(sched, lambda r: 9 if rng.random() < 0.1 else FILL)
    step = 0
    while sched.has_unfinished():
        w.step()
        step += 1
        if step % 3 == 0:
            sched.abort([rng.choice(ids)])
        assert step < 2000
    assert_no_leak(sched)


# -- admission ---------------------------------------------------------------------------

def test_bounded_waiting_queue_raises_queue_full():
    sched = make_scheduler(max_waiting=2)
    sched.add_request(make_request("a", 2))
    sched.add_request(make_request("b", 2))
    with pytest.raises(QueueFullError):
        sched.add_request(make_request("c", 2))
    assert "c" not in sched.requests
    assert len(sched.waiting) == 2
    FakeWorker(sched).step()  # both admitted: the queue has room again
    sched.add_request(make_request("c", 2))
    assert [r.request_id for r in sched.waiting] == ["c"]


def test_queue_full_error_is_a_runtime_error():
    assert issubclass(QueueFullError, RuntimeError)


def test_request_larger_than_the_whole_pool_is_refused():
    sched = make_scheduler(num_blocks=2, block_size=4)
    # 8 prompt tokens + 1 to sample = 9 tokens -> 3 blocks > 2.
    with pytest.raises(ValueError, match="KV"):
        sched.add_request(make_request("big", 8))
    assert "big" not in sched.requests and not sched.waiting
    sched.add_request(make_request("ok", 7, max_tokens=1))  # 8 tokens -> 2 blocks fits
    w = FakeWorker(sched)
    w.run()
    assert w.finish["ok"][0] == "length"
    assert_no_leak(sched)


def test_duplicate_request_id_is_refused():
    sched = make_scheduler()
    sched.add_request(make_request("a", 2))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_request("a", 3))
    assert len(sched.waiting) == 1
    assert sched.requests["a"].num_prompt_tokens == 2


def test_duplicate_of_a_running_request_id_is_refused():
    sched = make_scheduler()
    sched.add_request(make_request("a", 2, max_tokens=5))
    FakeWorker(sched).step()
    with pytest.raises(ValueError):
        sched.add_request(make_request("a", 2))


def test_request_that_can_never_fit_while_growing_does_not_hang():
    """A request accepted at admission must finish (or be refused up front).

    The pool holds 8 tokens (2 blocks of 4). The 4-token prompt passes the admission
    check (4 + 1 tokens -> 2 blocks), but generation up to max_tokens=10 needs 14 tokens.
    Once it has 9 tokens the request preempts itself, and from the waiting queue it can
    never be admitted again: it must not stay unfinished forever.
    """
    sched = make_scheduler(num_blocks=2, block_size=4, max_model_len=1024)
    try:
        sched.add_request(make_request("a", 4, max_tokens=10))
    except ValueError:
        return  # refusing it up front is an acceptable behaviour
    w = FakeWorker(sched)
    for _ in range(100):
        if not sched.has_unfinished():
            break
        w.step()
    assert not sched.has_unfinished(), (
        f"request stuck: waiting={list(sched.waiting)}, running={sched.running}, "
        f"preemptions={sched.num_preemptions}")
