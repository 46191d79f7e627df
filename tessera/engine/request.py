"""Request: one sequence's state inside the engine core.

A request has `num_tokens` (prompt + output so far), `num_pending_tokens` (steps still in
flight that will sample for it; their tokens are not known here yet), `spec_token_ids`
(draft tokens proposed for it, to be verified by its next step) and `num_computed_tokens`
(how many positions are in the KV cache or being written by a scheduled step: it advances
when a step is scheduled, and goes back by the drafts a step rejects). The scheduler's one
rule is to let every request catch up; a request samples when a step brings it level
(computed == tokens + pending + drafts).
"""
from __future__ import annotations

import enum
import time
from typing import Optional

from tessera.sampling_params import SamplingParams


def check_token_ids(prompt_token_ids: list[int], params: Optional[SamplingParams],
                    vocab_size: int) -> None:
    """ValueError unless every prompt and stop token id (params', if given) is an
    integer in the vocabulary (the sampler indexes logits with stop ids while min_tokens
    holds them back). The front end checks here, and the engine core again."""
    stop = params.stop_token_ids if params is not None else []
    for what, ids in (("prompt token id", prompt_token_ids), ("stop_token_ids", stop)):
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int)
                    or not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"{what} {bad!r} is outside the vocabulary (0..{vocab_size - 1}).")


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"  # failed in the worker (worker/step_faults.py)

    @property
    def finished(self) -> bool:
        return self.value in ("stop", "length", "abort", "error")


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 eos_token_ids: tuple[int, ...] = (), arrival_time: Optional[float] = None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.num_pending_tokens = 0  # sampled by in-flight steps, not appended yet
        self.spec_token_ids: list[int] = []  # drafts its next step verifies
        self.acceptance: Optional[float] = None  # running share of its drafts accepted
        self.spec_idle_steps = 0  # steps it drafted nothing since speculating paid off
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache
        self.cost = 0.0  # dollars of the instance's time its tokens took (engine/cost.py)
        self.num_prompt_logprobs_done = 1 if params.prompt_logprobs is not None else 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """all_token_ids[start:end] without building the whole list."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - p]

    @property
    def finish_reason(self) -> Optional[str]:
        return self.status.value if self.status.finished else None

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens})")
