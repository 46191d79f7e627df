"""Rejection sampler: a verify step's logits and the drafts it judged -> each request's
accepted drafts plus one token, distributed exactly as the target alone would sample.

Objects: VerifyRows (which rows of the step's logits belong to which request, and the
draft each row judges) and `verify(logits, batch, rows, draft_probs, argmax)`.
Layout: a request with k drafts has k + 1 consecutive rows; row i (i < k) holds the
target's distribution of the token after draft i - 1 (after the last known token for
i = 0) and judges draft i; its last row (the "bonus" row, draft id -1) gives the token
after the last draft. A request without drafts is one bonus row: plain sampling.
Rule (Leviathan et al. 2023; Chen et al. 2023), per row with p the target's distribution
(bans, penalties, temperature, top-k/top-p/min-p applied: layers/sampler.py) and q the
draft's: accept draft d when u * q(d) < p(d), u ~ U[0, 1) from the request's generator;
at the first rejection, draw from the residual max(0, p - q) renormalized; when all are
accepted, draw the bonus token from p. A deterministic proposer (n-gram, or a draft that
took its argmax) has q = one-hot(d): accept with probability p(d), residual p without d.
Greedy rows (temperature 0) accept d when it is the target's argmax and emit the argmax.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from tessera.engine.protocol import LogprobsEntry
from tessera.layers.sampler import (Argmax, SamplingBatch, adjusted_logits, fill_rows,
                                    gather_logprobs, probabilities, race)
from tessera.kernels.reference import argmax_ref


@dataclasses.dataclass
class VerifyRows:
    spans: list[tuple[int, int]]  # per request: (first row, rows = drafts + 1)
    draft_ids: torch.Tensor  # [R] int64: the draft each row judges; -1 on bonus rows


def verify(logits: torch.Tensor, batch: SamplingBatch, rows: VerifyRows,
           draft_probs: Optional[torch.Tensor] = None, argmax: Argmax = argmax_ref
           ) -> tuple[list[list[int]], list[list[LogprobsEntry]]]:
    """logits: [R, V] float32; batch: per-row settings (each row's history holds the
    drafts before it); draft_probs: [R, V] q of the rows whose draft was sampled (None,
    or a zero row: q is one-hot at the draft). -> per request, its emitted tokens (the
    accepted drafts, then one more) and their logprobs entries (empty lists unless the
    request asked for logprobs)."""
    raw = (torch.log_softmax(logits, dim=-1)
           if any(n is not None for n in batch.num_logprobs) else None)
    adjusted = adjusted_logits(logits, batch)
    greedy_ids = argmax(adjusted)  # [R]
    drafts = rows.draft_ids
    accept = drafts == greedy_ids
    final = greedy_ids
    if not batch.all_greedy:
        random_accept, recovered = _random_rows(adjusted, batch, drafts, draft_probs, argmax)
        greedy_row = batch.temperature < 1e-5
        accept = torch.where(greedy_row, accept, random_accept)
        final = torch.where(greedy_row, greedy_ids, recovered)
    accept_l, final_l, drafts_l = accept.tolist(), final.tolist(), drafts.tolist()
    emitted, emitted_rows = [], []
    for first, count in rows.spans:
        n = 0
        while n < count - 1 and accept_l[first + n]:
            n += 1
        emitted.append(drafts_l[first:first + n] + [final_l[first + n]])
        emitted_rows.append(range(first, first + n + 1))
    entries: list[list[LogprobsEntry]] = [[] for _ in rows.spans]
    if raw is not None:
        flat = [r for span in emitted_rows for r in span]
        tokens = torch.tensor([t for e in emitted for t in e], device=logits.device)
        got = gather_logprobs(raw[flat], tokens, [batch.num_logprobs[r] for r in flat])
        i = 0
        for j, span in enumerate(emitted_rows):
            entries[j] = [e for e in got[i:i + len(span)] if e is not None]
            i += len(span)
    return emitted, entries


def _random_rows(adjusted: torch.Tensor, batch: SamplingBatch, drafts: torch.Tensor,
                 draft_probs: Optional[torch.Tensor], argmax: Argmax):
    """-> (accepted [R] bool, the token each row gives on a rejection or as bonus [R])."""
    probs = probabilities(adjusted, batch)  # [R, V], rows sum to 1
    has_draft = drafts >= 0
    d = drafts.clamp(min=0)[:, None]  # [R, 1]
    p_d = probs.gather(1, d)[:, 0]
    onehot = torch.zeros_like(probs).scatter_(1, d, 1.0)
    q = onehot
    if draft_probs is not None:
        sampled = draft_probs.sum(dim=-1, keepdim=True) > 0  # rows whose draft was drawn
        q = torch.where(sampled, draft_probs, onehot)
    q = torch.where(has_draft[:, None], q, torch.zeros_like(q))
    q_d = q.gather(1, d)[:, 0]
    u = _uniform(batch.generators, probs, batch.shared_generator)
    accepted = has_draft & (u * q_d < p_d)
    residual = (probs - q).clamp(min=0)
    empty = residual.sum(dim=-1, keepdim=True) <= 0  # p == q: a rejection cannot happen
    residual = torch.where(empty, probs, residual)
    return accepted, race(residual, batch.generators, argmax, batch.shared_generator)


def _uniform(generators: list[torch.Generator], like: torch.Tensor,
             shared: Optional[torch.Generator] = None) -> torch.Tensor:
    """One U[0, 1) per row, from the row's generator -> [R] float32 (shared: `fill_rows`)."""
    u = torch.empty(like.shape[0], device=like.device)
    fill_rows(u, generators, lambda t, gen: t.uniform_(generator=gen), shared)
    return u
