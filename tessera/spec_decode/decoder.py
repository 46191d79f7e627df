"""SpecDecoder: the model runner's speculative half: verify a step's drafts, propose the
next step's.

Objects: SpecDecoder, NgramProposer. The engine runs speculation with synchronous steps
(no async scheduling: the next step's drafts depend on this step's tokens, which come
back to the host here). Per step, after the target's forward over every request's known
tokens and drafts (worker/input_batch.py):
1. `verify(logits, states, batch_of)`: the rejection sampler (rejection.py) over the
   sampling rows (a request with k drafts has k + 1), each row with its own history
   (the drafts before it count as outputs for penalties and min_tokens) -> per request
   its emitted tokens; the states' computed counts go back by the rejected drafts, the
   tokens are appended.
2. `propose(step_states, sampled, num_drafts, ...)`: the proposer's drafts (draft.py's
   DraftModel, or n-gram lookup), as many as the engine's DraftPolicy asked for each
   request (engine/spec_policy.py: the adaptive count and the batch-size off-switch),
   within the context and max_tokens.
`draft_cost`: one draft step's host time over one verify step's (exponentially weighted),
measured here and sent back to the DraftPolicy (n-gram drafts: 0).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional

import torch

from tessera.config import EngineConfig
from tessera.engine.protocol import LogprobsEntry
from tessera.layers.sampler import SamplingBatch
from tessera.spec_decode.ngram import propose_ngram
from tessera.spec_decode.rejection import VerifyRows, verify
from tessera.worker.input_batch import RequestState

BatchOf = Callable[[list[RequestState], Optional[list[list[int]]]], SamplingBatch]


class NgramProposer:
    weight_bytes = 0
    bytes_per_block = 0

    def __init__(self, n_min: int, n_max: int):
        self.n_min, self.n_max = n_min, n_max

    def propose(self, states, proposing: dict[str, int], batch_of, argmax):
        out = {}
        for st in states:
            k = proposing.get(st.request_id, 0)
            drafts = propose_ngram(st.token_ids, k, self.n_min, self.n_max) if k else []
            if drafts:
                out[st.request_id] = (drafts, None)
        return out


class SpecDecoder:
    def __init__(self, config: EngineConfig, device: torch.device, dtype: torch.dtype,
                 kv_dtype: torch.dtype, block_size: int):
        spec = config.speculative
        self.max_model_len = config.max_model_len
        if spec.method == "draft":
            from tessera.spec_decode.draft import DraftModel
            self.proposer = DraftModel(config, device, dtype, kv_dtype, block_size)
        else:
            self.proposer = NgramProposer(spec.ngram_min, spec.ngram_max)
        self.draft_cost = 0.0  # one draft step / one verify step, measured (n-gram: 0)
        self._verify_seconds: Optional[float] = None
        # host seconds of the latest verify steps (forward + rejection sampling) and
        # proposals (catch-up + draft steps), for benchmarks
        self.timings = {"verify": deque(maxlen=4096), "propose": deque(maxlen=4096)}

    # -- verify ------------------------------------------------------------------------
    def verify(self, logits: torch.Tensor, states: list[RequestState], batch_of: BatchOf,
               argmax, plain_greedy: bool = False
               ) -> tuple[list[list[int]], list[list[LogprobsEntry]]]:
        """logits: [R, V] (float32 unless plain_greedy: every request greedy with no
        logprobs, penalties or bans, where the argmax alone decides), the sampling rows
        of `states` in order."""
        if plain_greedy:
            emitted = self._verify_argmax(argmax(logits).tolist(), states)
            self._apply(states, emitted)
            return emitted, [[] for _ in states]
        row_states, before, spans, draft_ids = [], [], [], []
        for st in states:
            spans.append((len(row_states), len(st.drafts) + 1))
            for i in range(len(st.drafts) + 1):
                row_states.append(st)
                before.append(st.drafts[:i])
                draft_ids.append(st.drafts[i] if i < len(st.drafts) else -1)
        rows = VerifyRows(spans, torch.tensor(draft_ids, device=logits.device))
        q = self._draft_probs(states, logits)
        emitted, entries = verify(logits, batch_of(row_states, before), rows, q, argmax)
        self._apply(states, emitted)
        return emitted, entries

    @staticmethod
    def _verify_argmax(ids: list[int], states: list[RequestState]) -> list[list[int]]:
        """Greedy rows on the host: the drafts that are the argmax, then the argmax."""
        emitted, row = [], 0
        for st in states:
            n = 0
            while n < len(st.drafts) and st.drafts[n] == ids[row + n]:
                n += 1
            emitted.append(st.drafts[:n] + [ids[row + n]])
            row += len(st.drafts) + 1
        return emitted

    @staticmethod
    def _apply(states: list[RequestState], emitted: list[list[int]]) -> None:
        """Rejected drafts roll the computed count back; the tokens are appended."""
        for st, toks in zip(states, emitted):
            st.num_computed_tokens -= len(st.drafts) - (len(toks) - 1)
            st.token_ids.extend(toks)
            st.drafts = []

    def _draft_probs(self, states: list[RequestState], logits) -> Optional[torch.Tensor]:
        """q rows aligned with the verify rows (zeros where q is one-hot), or None."""
        if not any(getattr(st.spec, "q", None) is not None and st.drafts for st in states):
            return None
        parts = []
        for st in states:
            q = getattr(st.spec, "q", None)
            k = len(st.drafts)
            block = torch.zeros((k + 1, logits.shape[1]), device=logits.device)
            if q is not None and k:
                block[:k] = q[:k]
            parts.append(block)
        return torch.cat(parts)

    # -- propose -----------------------------------------------------------------------
    def propose(self, step_states: list[RequestState], sampled: list[RequestState],
                num_drafts: dict[str, int], batch_of: BatchOf, argmax) -> dict[str, list[int]]:
        """num_drafts: request id -> drafts wanted (the engine's DraftPolicy). -> request
        id -> drafts for its next step (only requests that got some)."""
        proposing = {}
        for st in sampled:
            k = min(num_drafts.get(st.request_id, 0), self._room(st))
            if k > 0:
                proposing[st.request_id] = k
        start = time.perf_counter()
        got = self.proposer.propose(step_states, proposing,
                                    lambda sts: batch_of(sts, None), argmax)
        seconds = time.perf_counter() - start
        if proposing:
            self.timings["propose"].append(seconds)
        self._measure_draft(seconds, proposing)
        out = {}
        for st in sampled:
            drafts, q = got.get(st.request_id, ([], None))
            if getattr(st.spec, "q", None) is not None or q is not None:
                st.spec.q = q
            if drafts:
                out[st.request_id] = drafts
        return out

    def _room(self, st: RequestState) -> int:
        """Drafts that fit the context and the output budget (a verify step gives up to
        drafts + 1 tokens)."""
        room = self.max_model_len - len(st.token_ids)
        if st.params.max_tokens is not None:
            room = min(room, st.params.max_tokens
                       - (len(st.token_ids) - st.num_prompt_tokens) - 1)
        return room

    def note_verify_time(self, seconds: float) -> None:
        """The target's step time (the runner measures it), for the draft cost ratio."""
        self.timings["verify"].append(seconds)
        prev = self._verify_seconds
        self._verify_seconds = seconds if prev is None else prev + 0.2 * (seconds - prev)

    def _measure_draft(self, seconds: float, proposing: dict[str, int]) -> None:
        if not proposing or not self._verify_seconds or self.proposer.weight_bytes == 0:
            return
        per_step = seconds / max(proposing.values())
        ratio = per_step / self._verify_seconds
        self.draft_cost += 0.2 * (ratio - self.draft_cost)
