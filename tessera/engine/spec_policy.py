"""DraftPolicy: how many draft tokens each request gets, decided in the engine core.

The scheduler asks `num_drafts(req, batch_size)` for every request it schedules and sends
the answers in the SchedulerOutput (`num_drafts`): the workers propose that many after
the step (one decision for every tensor-parallel rank, which must run the same draft
steps). Inputs, all measured:
- a request's running acceptance rate a (per draft, exponentially weighted with weight
  0.3 per verify step, from 0.6 before its first): `note_verified(req, drafted, accepted)`;
- c, the cost of one draft step over one verify step, from the worker's timings
  (`note_draft_cost`; 0 for n-gram drafts, which cost no forward).
A step of k drafts yields E(k) = (1 - a^(k+1)) / (1 - a) tokens for 1 + k c of the time:
k in 1..K maximizes E(k) / (1 + k c) (K: num_speculative_tokens; with adaptivity off,
always K). When even the best k is a loss (E(k) / (1 + k c) < 1: drafts that rarely come
true, or cost too much), the request drafts nothing but a probe of one draft, after 8,
16, 32, 64 and 128 idle steps and then every 128, to keep its rate current (a probe that
comes true raises the rate by 0.3 of the way to 1, which may make drafting pay again). Off-switch: no drafts in a step of more than
`speculative_max_batch` requests (a large batch is compute-bound, so a verify token costs
what a plain one does). A request with structured outputs drafts nothing (its verify rows
would each need the grammar's mask at a position not yet reached). A step with no drafts
asked for runs as without speculation (asynchronously, where async scheduling is on:
engine/core.py).
"""
from __future__ import annotations

from tessera.config import SpeculativeConfig
from tessera.engine.request import Request

ACCEPTANCE_PRIOR = 0.6
ACCEPTANCE_WEIGHT = 0.3
PROBE_FIRST, PROBE_MAX = 8, 128  # idle steps before the first probe; the longest gap


class DraftPolicy:
    def __init__(self, config: SpeculativeConfig):
        self.k_max = config.num_speculative_tokens
        self.adaptive = config.speculative_adaptive
        self.max_batch = config.speculative_max_batch
        self.draft_cost = 0.0

    def num_drafts(self, req: Request, batch_size: int) -> int:
        if batch_size > self.max_batch or req.params.structured_outputs is not None:
            return 0  # a large batch; a grammar's masks (drafts would need one per position)
        if not self.adaptive:
            return self.k_max
        a = min(ACCEPTANCE_PRIOR if req.acceptance is None else req.acceptance, 0.99)
        c = self.draft_cost
        gain = {k: (1 - a ** (k + 1)) / (1 - a) / (1 + k * c) for k in range(1, self.k_max + 1)}
        best = max(gain, key=gain.get)
        if gain[best] >= 1:
            req.spec_idle_steps = 0
            return best
        req.spec_idle_steps += 1  # a loss: no drafts, but a probe now and then
        n = req.spec_idle_steps
        probe = n >= PROBE_FIRST and (n & (n - 1) == 0 or n % PROBE_MAX == 0)
        return 1 if probe else 0

    @staticmethod
    def note_verified(req: Request, drafted: int, accepted: int) -> None:
        prior = ACCEPTANCE_PRIOR if req.acceptance is None else req.acceptance
        req.acceptance = prior + ACCEPTANCE_WEIGHT * (accepted / drafted - prior)

    def note_draft_cost(self, ratio: float) -> None:
        if ratio > 0:
            self.draft_cost = ratio
