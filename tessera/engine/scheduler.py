"""Scheduler: hands out each step's token budget; no prefill or decode phases.

Rule: running requests first (in arrival order), then waiting ones (FCFS), each gets
min(tokens it lacks, budget left). That one rule gives continuous batching, chunked
prefill and resumption after preemption. When the KV pool is short for a running
request, the newest running request is preempted (its blocks freed; it goes back to the
front of the queue and is recomputed later).

Flow per step: `schedule()` -> SchedulerOutput -> worker -> ModelRunnerOutput ->
`update_from_output()` -> EngineCoreOutputs (new tokens, finishes; blocks freed).
A request's computed count advances when it is scheduled. With `schedule_in_flight`
(async scheduling) a request whose last step is still running is scheduled again: the
token that step samples is pending here (the worker feeds it from the device), and a
request whose pending tokens already reach max_tokens is left alone. Without it
(pipeline stages), requests in flight are skipped.
Several tokens per request per step: a request's draft tokens (`spec_token_ids`, from a
speculative proposer, set before each step) are scheduled after its known tokens, as many
as the budget, the context length and max_tokens allow, and listed in the output's
`scheduled_spec_token_ids` (the rest are dropped: a proposer proposes anew each step); the
step returns the accepted drafts plus one sampled token, and the computed count goes back
by the drafts it rejected. With speculation configured, the output also says how many
drafts to propose for each request after the step (`num_drafts`, spec_policy.py), and a
draft model gets `num_lookahead` slots past each request's tokens for its drafts' KV.
Each returned token is checked against the stop rule (stopping.py) in order; tokens after
a stop are dropped.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Optional

from tessera.config import SchedulerConfig
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import (CachedRequestData, EngineCoreOutput, ModelRunnerOutput,
                                     NewRequestData, SchedulerOutput)
from tessera.engine.request import Request, RequestStatus
from tessera.engine.spec_policy import DraftPolicy
from tessera.stopping import check_stop, length_reached

_FINISHED = {"stop": RequestStatus.FINISHED_STOPPED, "length": RequestStatus.FINISHED_LENGTH}


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the caller should retry later (HTTP 503)."""


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, max_model_len: int,
                 schedule_in_flight: bool = False, num_lookahead: int = 0,
                 draft_policy: Optional[DraftPolicy] = None):
        self.config = config
        self.num_lookahead = num_lookahead  # slots past a step's tokens a draft model writes
        self.draft_policy = draft_policy  # speculative decoding: drafts per request
        self.schedule_in_flight = schedule_in_flight
        self.kv = kv
        self.max_model_len = max_model_len
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._finished_ids: set[str] = set()  # to tell the worker at the next step
        self.num_preemptions = 0
        self.queue_times: dict[str, float] = {}  # first admissions since last drained
        self.in_flight: set[str] = set()  # scheduled in a step whose output is not back yet
        self.num_drafted = self.num_accepted = self.num_verify_steps = 0  # speculation

    # -- admission and abort ---------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({self.config.max_waiting} requests)")
        max_tokens = req.params.max_tokens
        longest = min(req.num_prompt_tokens + (max_tokens or self.max_model_len)
                      + self.num_lookahead, self.max_model_len)
        capacity = self.kv.pool.num_blocks * self.kv.block_size
        if self.kv.blocks_needed(longest) > self.kv.pool.num_blocks:
            raise ValueError(
                f"request {req.request_id!r} may grow to {longest} tokens but the whole KV cache "
                f"holds {capacity}; lower max_tokens or enlarge the cache."
            )
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def abort(self, request_ids: list[str]) -> list[Request]:
        aborted = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.status.finished:
                continue
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            else:
                self.waiting.remove(req)
            self._finish(req, RequestStatus.FINISHED_ABORTED)
            aborted.append(req)
        return aborted

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached: list[CachedRequestData] = []
        preempted: set[str] = set()
        spec: dict[str, list[int]] = {}

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(self._tokens_to_compute(req), budget)
            if n <= 0:
                i += 1
                continue
            new_blocks = self.kv.allocate_slots(req, n, num_lookahead=self._lookahead(req, n))
            while new_blocks is None:  # short of blocks: preempt the newest running request
                victim = self._newest_idle()
                if victim is None:
                    break
                self.running.remove(victim)
                self._preempt(victim)
                preempted.add(victim.request_id)
                if victim is req:
                    break
                new_blocks = self.kv.allocate_slots(req, n,
                                                    num_lookahead=self._lookahead(req, n))
            if new_blocks is None:
                break
            start = req.num_computed_tokens  # tokens still being sampled are not known here
            known = req.token_slice(start, start + n)
            cached.append(CachedRequestData(req.request_id, new_blocks, known))
            drafts = (self._drafts(req)[:max(0, start + n - req.num_tokens)]
                      if req.spec_token_ids and not req.num_pending_tokens else [])
            if drafts:
                spec[req.request_id] = drafts
            req.spec_token_ids = []  # proposed for this step: scheduled, or dropped
            num_scheduled[req.request_id] = n
            self._advance(req, n)
            budget -= n
            i += 1

        while (self.waiting and budget > 0 and not preempted
               and len(self.running) < self.config.max_num_seqs):
            req = self.waiting[0]
            hits = self.kv.find_prefix(req)  # a new or preempted request computes from 0
            num_hit = hits.num_blocks * self.kv.block_size
            n = min(req.num_tokens - num_hit, budget)
            lookahead = self._lookahead(req, num_hit + n, admitted=True)
            if self.kv.allocate_slots(req, n, hits, lookahead) is None:
                break
            req.num_computed_tokens = num_hit
            req.num_cached_tokens = max(req.num_cached_tokens, num_hit)
            self.waiting.popleft()
            if req.status == RequestStatus.WAITING:  # first admission, not a resumption
                self.queue_times[req.request_id] = time.monotonic() - req.arrival_time
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            new_reqs.append(NewRequestData(
                request_id=req.request_id, token_ids=req.all_token_ids,
                num_prompt_tokens=req.num_prompt_tokens, params=req.params,
                block_ids=list(self.kv.block_ids(req.request_id)),
                num_computed_tokens=req.num_computed_tokens,
                num_prompt_logprobs_done=req.num_prompt_logprobs_done))
            num_scheduled[req.request_id] = n
            self._advance(req, n)
            budget -= n

        finished, self._finished_ids = self._finished_ids, set()
        self.in_flight.update(num_scheduled)
        out = SchedulerOutput(new_reqs, cached, num_scheduled, finished, preempted, spec)
        out.kv_to_host, out.kv_to_device = self.kv.take_copies()  # the KV host tier's
        if self.draft_policy is not None:
            size = len(num_scheduled)
            for rid in num_scheduled:
                k = self.draft_policy.num_drafts(self.requests[rid], size)
                if k:
                    out.num_drafts[rid] = k
        return out

    def _tokens_to_compute(self, req: Request) -> int:
        if req.request_id in self.in_flight and not self.schedule_in_flight:
            return 0  # pipeline: its last step is still running
        ahead = req.num_tokens + req.num_pending_tokens
        if req.num_pending_tokens:
            if length_reached(req.params, req.num_output_tokens + req.num_pending_tokens, ahead,
                              self.max_model_len):
                return 0  # the tokens in flight finish it
            return ahead - req.num_computed_tokens  # no drafts behind unknown tokens
        return ahead + len(self._drafts(req)) - req.num_computed_tokens

    def _lookahead(self, req: Request, n: int, admitted: bool = False) -> int:
        """Slots a draft model writes beyond the step's n tokens (its drafts for the next
        step), within the context."""
        computed = (0 if admitted else req.num_computed_tokens) + n
        return max(0, min(self.num_lookahead, self.max_model_len - computed))

    def _drafts(self, req: Request) -> list[int]:
        """The drafts a step may verify: none at a position past the context length, nor
        more than the output budget can take (a step returns up to drafts + 1 tokens)."""
        room = self.max_model_len - req.num_tokens
        if req.params.max_tokens is not None:
            room = min(room, req.params.max_tokens - req.num_output_tokens - 1)
        return req.spec_token_ids[:max(0, room)]

    def _advance(self, req: Request, n: int) -> None:
        """The step computes n more positions; reaching the end (drafts included), it
        samples."""
        req.num_computed_tokens += n
        if req.num_computed_tokens >= req.num_tokens + req.num_pending_tokens:
            req.num_pending_tokens += 1

    def _newest_idle(self):
        """The newest running request that may be preempted. With pipeline stages, one in
        flight may not (its micro-batch still runs); with async scheduling any may: its
        in-flight token is dropped and it is recomputed later."""
        for req in reversed(self.running):
            if self.schedule_in_flight or req.request_id not in self.in_flight:
                return req
        return None

    def update_from_output(self, sched: SchedulerOutput,
                           out: ModelRunnerOutput) -> list[EngineCoreOutput]:
        outputs = []
        spec = sched.scheduled_spec_token_ids
        if self.draft_policy is not None:
            self.draft_policy.note_draft_cost(out.draft_cost)
        self.in_flight.difference_update(sched.num_scheduled_tokens)
        outputs.extend(self._fail(out.failed))
        for rid, n in sched.num_scheduled_tokens.items():
            req = self.requests.get(rid)
            if req is None or req.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            prompt_lps = self._take_prompt_logprobs(req, out.prompt_logprobs.get(rid))
            tokens = out.sampled_token_ids.get(rid)
            if not tokens:
                self.kv.cache_blocks(req)
                if prompt_lps:
                    outputs.append(EngineCoreOutput(rid, [], [], prompt_lps))
                continue
            if spec and rid in spec:  # the drafts it rejected go back
                req.num_computed_tokens -= len(spec[rid]) - (len(tokens) - 1)
                self.num_drafted += len(spec[rid])
                self.num_accepted += len(tokens) - 1
                self.num_verify_steps += 1
                DraftPolicy.note_verified(req, len(spec[rid]), len(tokens) - 1)
            req.num_pending_tokens -= 1
            new, status = self._append(req, tokens)
            self.kv.cache_blocks(req)
            lps = out.logprobs.get(rid) or []
            if len(lps) > len(new):
                lps = lps[:len(new)]
            if status is not None:
                self.running.remove(req)
                self._finish(req, status)
            else:
                req.spec_token_ids = list(out.spec_token_ids.get(rid, ()))
            outputs.append(EngineCoreOutput(rid, new, lps, prompt_lps, req.finish_reason,
                                            req.stop_reason, req.num_cached_tokens, req.cost))
        return outputs

    def _fail(self, failed: dict[str, str]) -> list[EngineCoreOutput]:
        """Ends the requests that failed in the worker (finish reason "error", the
        message as stop reason); their blocks are freed."""
        outputs = []
        for rid, message in failed.items():
            req = self.requests.get(rid)
            if req is None or req.status.finished:
                continue
            (self.running if req.status == RequestStatus.RUNNING else self.waiting).remove(req)
            self._finish(req, RequestStatus.FINISHED_ERROR)
            req.stop_reason = message
            outputs.append(EngineCoreOutput(rid, [], [], [], "error", message,
                                            req.num_cached_tokens, req.cost))
        return outputs

    def _append(self, req: Request, tokens: list[int]):
        """Appends tokens up to the first that stops the request: (appended, status)."""
        outputs, prompt_len = req.output_token_ids, len(req.prompt_token_ids)
        for i, token in enumerate(tokens):
            outputs.append(token)
            stop = check_stop(req.params, token, len(outputs), prompt_len + len(outputs),
                              req.eos_token_ids, self.max_model_len)
            if stop is not None:
                reason, req.stop_reason = stop
                return tokens[:i + 1], _FINISHED[reason]
        return tokens, None

    # -- helpers -----------------------------------------------------------------------
    def _take_prompt_logprobs(self, req: Request, got) -> list:
        if got is None:
            return []
        start, entries = got
        fresh = entries[max(0, req.num_prompt_logprobs_done - start):]
        req.num_prompt_logprobs_done += len(fresh)
        return fresh

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.num_computed_tokens = req.num_pending_tokens = 0
        req.spec_token_ids = []
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.status = status
        self.kv.free(req)
        self._finished_ids.add(req.request_id)
        del self.requests[req.request_id]
