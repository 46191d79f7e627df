"""OutputProcessor: engine-core outputs -> RequestOutputs for callers.

Per sample (a "child"; a request with n > 1 has n children) it keeps a Tracker: the
incremental detokenizer, the text and ids so far, logprobs in vLLM's shape. It applies
stop strings (which need text, so they live here, not in the core): a match truncates
the text, finishes the child, and its id is returned so the core aborts it and frees
its blocks; min_tokens gates them as it gates stop tokens (stopping.py). A parent's
RequestOutput gathers its children in index order; a parent added with stream=False
(offline generation) gets one, at the end, and no copies before.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tessera.engine.protocol import EngineCoreOutput, LogprobsEntry
from tessera.frontend.detokenizer import find_stop, make_detokenizer
from tessera.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from tessera.sampling_params import SamplingParams
from tessera.stopping import may_stop


@dataclasses.dataclass
class Tracker:
    parent_id: str
    index: int
    params: SamplingParams
    detokenizer: Optional[Any]  # frontend/detokenizer.py: make_detokenizer
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: Optional[list[PositionLogprobs]] = None
    cumulative_logprob: Optional[float] = None
    finish_reason: Optional[str] = None
    stop_reason: int | str | None = None

    def completion(self) -> CompletionOutput:
        return CompletionOutput(self.index, self.text, list(self.token_ids),
                                self.cumulative_logprob, self.logprobs,
                                self.finish_reason, self.stop_reason)


@dataclasses.dataclass
class Parent:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    children: list[str]
    prompt_logprobs: Optional[list[Optional[PositionLogprobs]]] = None
    num_cached_tokens: int = 0
    costs: dict[str, float] = dataclasses.field(default_factory=dict)  # child id -> dollars
    stream: bool = True  # False: one RequestOutput, when every child has finished


class OutputProcessor:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.parents: dict[str, Parent] = {}
        self.trackers: dict[str, Tracker] = {}

    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                    child_params: list[tuple[str, SamplingParams]], stream: bool = True) -> None:
        parent = Parent(request_id, prompt, prompt_token_ids, [cid for cid, _ in child_params],
                        stream=stream)
        if child_params[0][1].prompt_logprobs is not None:
            parent.prompt_logprobs = [None]
        self.parents[request_id] = parent
        for index, (cid, params) in enumerate(child_params):
            detok = (make_detokenizer(self.tokenizer, prompt_token_ids,
                                      params.skip_special_tokens)
                     if self.tokenizer is not None else None)
            self.trackers[cid] = Tracker(request_id, index, params, detok,
                                         logprobs=[] if params.logprobs is not None else None,
                                         cumulative_logprob=0.0 if params.logprobs is not None
                                         else None)

    def child_ids(self, request_id: str) -> list[str]:
        parent = self.parents.get(request_id)
        return list(parent.children) if parent else []

    def process(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns (outputs of parents that changed, child ids the core must abort)."""
        changed: dict[str, None] = {}
        to_abort: list[str] = []
        for out in outputs:
            tr = self.trackers.get(out.request_id)
            if tr is None or tr.finish_reason is not None:
                continue
            parent = self.parents[tr.parent_id]
            if out.new_prompt_logprobs and tr.index == 0:
                parent.prompt_logprobs += [self._to_logprobs(e) for e in out.new_prompt_logprobs]
            parent.num_cached_tokens = max(parent.num_cached_tokens, out.num_cached_tokens)
            parent.costs[out.request_id] = out.cost
            if self._append(tr, out) and not out.finished:
                to_abort.append(out.request_id)
            if parent.stream or all(self.trackers[c].finish_reason is not None
                                    for c in parent.children):
                changed[tr.parent_id] = None
        return [self._request_output(self.parents[pid]) for pid in changed], to_abort

    def abort(self, request_id: str) -> None:
        parent = self.parents.pop(request_id, None)
        for cid in parent.children if parent else []:
            self.trackers.pop(cid, None)

    def _append(self, tr: Tracker, out: EngineCoreOutput) -> bool:
        """Adds the tokens of one output; True when a stop string finished the child."""
        stopped_by_string = False
        for i, tok in enumerate(out.new_token_ids):
            tr.token_ids.append(tok)
            if tr.logprobs is not None and i < len(out.new_logprobs):
                entry = self._to_logprobs(out.new_logprobs[i])
                tr.logprobs.append(entry)
                tr.cumulative_logprob += entry[tok].logprob
            if tr.detokenizer is None:
                continue
            before = len(tr.text)
            tr.text += tr.detokenizer.add_token(tok)
            if tr.params.stop and may_stop(tr.params, len(tr.token_ids)):
                hit = find_stop(tr.text, before, tr.params.stop)
                if hit is not None:
                    idx, stop = hit
                    tr.text = tr.text[:idx + len(stop) if tr.params.include_stop_str_in_output
                                      else idx]
                    tr.finish_reason, tr.stop_reason = "stop", stop
                    stopped_by_string = True
                    break
        if out.finished and not stopped_by_string:
            tr.finish_reason, tr.stop_reason = out.finish_reason, out.stop_reason
            if tr.detokenizer is not None:
                tr.text += tr.detokenizer.flush()
        return stopped_by_string

    def _to_logprobs(self, entry: LogprobsEntry) -> PositionLogprobs:
        ids, vals, ranks = entry
        result: PositionLogprobs = {}
        for tok, val, rank in zip(ids, vals, ranks):
            if tok not in result:
                text = self.tokenizer.decode([tok]) if self.tokenizer is not None else None
                result[tok] = Logprob(val, rank, text)
        return result

    def _request_output(self, parent: Parent) -> RequestOutput:
        completions = [self.trackers[cid].completion() for cid in parent.children]
        finished = all(c.finished for c in completions)
        if finished:
            self.parents.pop(parent.request_id)
            for cid in parent.children:
                self.trackers.pop(cid)
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids,
                             parent.prompt_logprobs, completions, finished,
                             parent.num_cached_tokens, sum(parent.costs.values()))
