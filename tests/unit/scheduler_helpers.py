"""Helpers for the scheduler tests: a scheduler with no model, and a fake worker."""
from __future__ import annotations

from typing import Callable, Optional


from tessera.config import SchedulerConfig
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from tessera.engine.request import Request, RequestStatus
from tessera.engine.scheduler import Scheduler
from tessera.sampling_params import SamplingParams

EOS = 2
FILL = 7  # an ordinary token: never eos, never a stop token in these tests


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_num_batched_tokens: int = 32,
                   max_num_seqs: int = 16, max_waiting: int = 64,
                   max_model_len: int = 1024, prefix_caching: bool = False) -> Scheduler:
    """Prefix caching is off by default here: these prompts share prefixes on purpose,
    and the tests count computed tokens (tests/unit/test_prefix_cache.py covers reuse)."""
    config = SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens,
                             max_num_seqs=max_num_seqs, max_waiting=max_waiting)
    return Scheduler(config, KVCacheManager(num_blocks, block_size, prefix_caching),
                     max_model_len)


def make_request(rid: str, prompt_len: int, eos: tuple[int, ...] = (EOS,), **params) -> Request:
    params.setdefault("max_tokens", 4)
    return Request(rid, [100 + i for i in range(prompt_len)], SamplingParams(**params),
                   eos_token_ids=eos)


class FakeWorker:
    """Simulates the worker: samples `next_token(req)` when a step brings `req` level."""

    def __init__(self, sched: Scheduler, next_token: Optional[Callable[[Request], int]] = None):
        self.sched = sched
        self.next_token = next_token or (lambda req: FILL)
        self.steps: list[tuple[SchedulerOutput, list[EngineCoreOutput]]] = []
        self.tokens: dict[str, list[int]] = {}  # request id -> tokens streamed out
        self.finish: dict[str, tuple[Optional[str], object]] = {}  # id -> (reason, stop_reason)
        self.finish_order: list[str] = []
        self.first_scheduled_step: dict[str, int] = {}

    def step(self) -> tuple[SchedulerOutput, list[EngineCoreOutput]]:
        s = self.sched
        running_before = [r.request_id for r in s.running]
        so = s.schedule()
        # The budget of one step.
        assert so.total_num_scheduled_tokens <= s.config.max_num_batched_tokens
        assert len(so.num_scheduled_tokens) <= s.config.max_num_seqs
        # Preemption takes the newest running requests: a suffix of the running list.
        if so.preempted_request_ids:
            k = len(so.preempted_request_ids)
            assert set(running_before[-k:]) == so.preempted_request_ids
            for rid in so.preempted_request_ids:
                assert rid not in so.num_scheduled_tokens
                assert s.kv.block_ids(rid) == []
        sampled = {}
        for rid, n in so.num_scheduled_tokens.items():
            req = s.requests[rid]
            assert req.status == RequestStatus.RUNNING
            before = req.num_computed_tokens - n  # the count advances when scheduled
            assert 0 < n <= req.num_tokens - before
            # The request's blocks hold every token it will have computed after the step.
            assert len(s.kv.block_ids(rid)) * s.kv.block_size >= before + n
            self.first_scheduled_step.setdefault(rid, len(self.steps))
            if before + n == req.num_tokens:
                sampled[rid] = [self.next_token(req)]
        outs = s.update_from_output(so, ModelRunnerOutput(sampled, {}, {}))
        for out in outs:
            self.tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                self.finish[out.request_id] = (out.finish_reason, out.stop_reason)
                self.finish_order.append(out.request_id)
        self.steps.append((so, outs))
        return so, outs

    def run(self, max_steps: int = 2000) -> None:
        for _ in range(max_steps):
            if not self.sched.has_unfinished():
                return
            self.step()
        raise AssertionError(f"requests still unfinished after {max_steps} steps: "
                             f"running={self.sched.running} waiting={list(self.sched.waiting)}")


def assert_no_leak(sched: Scheduler) -> None:
    assert sched.kv.num_free_blocks == sched.kv.pool.num_blocks
    assert all(sched.kv.pool.ref_count(i) == 0 for i in range(sched.kv.pool.num_blocks))
