"""SamplingInputs: a step's per-row sampling settings as the sampler takes them.

Objects: SamplingInputs (`batch(states)`: layers/sampler.py's SamplingBatch for the
sampling rows, the settings copied to the device without waiting, the grammar masks
made there or handed in, and the model's ops' way of applying them; `plain_greedy(st)`:
whether a row needs nothing but an argmax),
`needs_history(params)` (penalties read every output token, so they must all be known),
MASKS_HERE (the default of `batch`'s `allowed`: the masks are made by `batch` itself).
Used by the model runner (worker/model_runner.py) and, through its `batch`, by the
speculative decoder's verify and propose steps.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from tessera.kernels.reference import apply_token_bitmask_ref
from tessera.layers.sampler import SamplingBatch
from tessera.stopping import banned_token_ids
from tessera.worker.input_batch import RequestState

MASKS_HERE = object()  # `batch`: make the rows' grammar masks there


def needs_history(p) -> bool:
    """Penalties read the request's output tokens, so they must all be known here."""
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1)


class SamplingInputs:
    def __init__(self, device: torch.device, default_generator: torch.Generator,
                 eos_token_ids, grammars=None, apply_mask=None):
        self.device = device
        self.apply_mask = apply_mask or apply_token_bitmask_ref  # the model's ops'
        self.default_generator = default_generator  # rows without a seed draw from it
        self.eos_token_ids = eos_token_ids
        self.grammars = grammars  # worker/grammar_masks.py (None: not the sampling stage)

    def batch(self, states: list[RequestState], drafts_before: Optional[list[list[int]]] = None,
              allowed: Any = MASKS_HERE) -> SamplingBatch:
        """Per-row settings, sent without waiting for the device (pinned, non-blocking).
        drafts_before: per row, the drafts before its position (a verify step's rows),
        which count as outputs for penalties and min_tokens. allowed: the rows' grammar
        masks [N, W] on the device, made already (default: made here)."""
        if allowed is MASKS_HERE:
            allowed = self.grammars.bitmask(states) if self.grammars is not None else None
        before = drafts_before or [[] for _ in states]
        ps = [s.params for s in states]
        floats = self._to_device(torch.tensor(
            [(p.temperature, p.top_p, p.min_p, p.presence_penalty, p.frequency_penalty,
              p.repetition_penalty) for p in ps], dtype=torch.float32))  # [N, 6]
        top_k = self._to_device(torch.tensor([p.top_k for p in ps], dtype=torch.int64))
        any_penalty = any(needs_history(p) for p in ps)
        return SamplingBatch(
            temperature=floats[:, 0], top_k=top_k, top_p=floats[:, 1], min_p=floats[:, 2],
            presence_penalty=floats[:, 3], frequency_penalty=floats[:, 4],
            repetition_penalty=floats[:, 5],
            use_top_k=any(p.top_k > 0 for p in ps), use_top_p=any(p.top_p < 1 for p in ps),
            use_min_p=any(p.min_p > 0 for p in ps),
            # the token lists only for penalties (copies of whole sequences, every step)
            prompt_token_ids=([s.token_ids[:s.num_prompt_tokens] for s in states]
                              if any_penalty else []),
            output_token_ids=([s.token_ids[s.num_prompt_tokens:] + b
                               for s, b in zip(states, before)] if any_penalty else []),
            generators=[s.generator or self.default_generator for s in states],
            shared_generator=self.default_generator,
            banned_token_ids=[self.banned(s, len(b)) for s, b in zip(states, before)],
            num_logprobs=[p.logprobs for p in ps],
            all_greedy=all(p.greedy for p in ps),
            allowed=allowed,
            apply_mask=self.apply_mask,
            any_penalty=any_penalty,
        )

    def plain_greedy(self, st: RequestState) -> bool:
        """Greedy with nothing else to apply: the step may take the argmax alone."""
        p = st.params
        return (p.greedy and p.logprobs is None and not needs_history(p) and st.grammar is None
                and not banned_token_ids(p, st.num_known_and_pending - st.num_prompt_tokens,
                                         self.eos_token_ids))

    def banned(self, st: RequestState, num_drafts: int = 0) -> list[int]:
        return banned_token_ids(
            st.params, st.num_known_and_pending - st.num_prompt_tokens + num_drafts,
            self.eos_token_ids)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)
