"""Sampler: one batch of logits -> one token per row, each row with its own settings.

Objects: SamplingBatch (per-row settings as tensors, built by the model runner) and
`sample(logits, batch, argmax)`, made of `adjusted_logits` (bans, penalties),
`probabilities` (temperature and the filters) and `race` (the draw), which speculative
decoding's rejection sampler (spec_decode/rejection.py) uses too; `argmax` is the model's ops' (layers/ops.py: the
split-row kernel on a GPU), for greedy rows and the race's draw. Order:
logprobs of the raw distribution (what users are shown) -> structured outputs' token
bitmask (worker/grammar_masks.py fills it; `batch.apply_mask` applies it: the model's
ops', one kernel on a GPU) -> min_tokens bans ->
repetition/presence/frequency penalties -> greedy rows take the argmax; the others:
temperature -> top-k -> top-p -> min-p -> a draw by the exponential race (argmax p / q,
q ~ Exp(1)), with a row's own torch.Generator when it has a seed, so a seeded request
draws the same tokens whatever else is in the batch (`fill_rows`: one draw for the rows
on the runner's generator, one more per seeded request's run of rows).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from tessera.engine.protocol import LogprobsEntry
from tessera.kernels.reference import apply_token_bitmask_ref, argmax_ref

Argmax = Callable[[torch.Tensor], torch.Tensor]  # [N, V] -> [N] int64, first maximum


@dataclasses.dataclass
class SamplingBatch:
    temperature: torch.Tensor  # [N] float32 (0: greedy)
    top_k: torch.Tensor  # [N] int64 (0: off)
    top_p: torch.Tensor  # [N] float32
    min_p: torch.Tensor  # [N] float32
    presence_penalty: torch.Tensor  # [N]
    frequency_penalty: torch.Tensor  # [N]
    repetition_penalty: torch.Tensor  # [N]
    prompt_token_ids: list[list[int]]  # per row; both lists empty unless any_penalty
    output_token_ids: list[list[int]]
    generators: list[torch.Generator]  # a seeded request's own, else the runner's
    banned_token_ids: list[list[int]]  # per row: ids that may not be sampled yet (min_tokens)
    num_logprobs: list[Optional[int]]  # per row: top alternatives wanted (None: no logprobs)
    all_greedy: bool
    any_penalty: bool
    # structured outputs: [N, W] int32 token bitmask (bit j of word w allows token 32w + j)
    allowed: Optional[torch.Tensor] = None
    # how `allowed` is applied to logits [N, V] in place: the model's ops' (layers/ops.py:
    # one Triton kernel on a GPU, kernels/token_bitmask.py), else the definition
    apply_mask: Callable[[torch.Tensor, torch.Tensor], None] = apply_token_bitmask_ref
    # which filters some row uses, known on the host (None: read from the tensors, a sync)
    use_top_k: Optional[bool] = None
    use_top_p: Optional[bool] = None
    use_min_p: Optional[bool] = None
    # the runner's generator (the rows without a seed take it): drawn from once for all
    # rows (`fill_rows`); None: each row draws on its own unless all share one
    shared_generator: Optional[torch.Generator] = None


def sample(logits: torch.Tensor, batch: SamplingBatch, argmax: Argmax = argmax_ref
           ) -> tuple[torch.Tensor, list[Optional[LogprobsEntry]]]:
    """logits: [N, V] float32 -> (tokens [N] int64 on the logits' device, logprobs entry
    per row or None). Without logprobs nothing waits for the device."""
    raw_logprobs = (torch.log_softmax(logits, dim=-1)
                    if any(n is not None for n in batch.num_logprobs) else None)
    logits = adjusted_logits(logits, batch)
    greedy_ids = argmax(logits)  # [N]
    if batch.all_greedy:
        tokens = greedy_ids
    else:
        sampled = race(probabilities(logits, batch), batch.generators, argmax,
                       batch.shared_generator)
        tokens = torch.where(batch.temperature < 1e-5, greedy_ids, sampled)
    entries = [None] * tokens.shape[0]
    if raw_logprobs is not None:
        entries = gather_logprobs(raw_logprobs, tokens, batch.num_logprobs)
    return tokens, entries


def adjusted_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """A copy of logits [N, V] with min_tokens bans and penalties applied: what greedy
    rows take the argmax of, and random rows' filters start from."""
    logits = logits.clone()
    if batch.allowed is not None:
        batch.apply_mask(logits, batch.allowed)
    for row, banned in enumerate(batch.banned_token_ids):
        if banned:
            logits[row, banned] = float("-inf")
    if batch.any_penalty:
        apply_penalties(logits, batch)
    return logits


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
    num_rows, vocab = logits.shape
    dev = logits.device
    out_counts = torch.zeros(num_rows, vocab, device=dev)
    seen = torch.zeros(num_rows, vocab, dtype=torch.bool, device=dev)
    for row, (prompt, output) in enumerate(zip(batch.prompt_token_ids, batch.output_token_ids)):
        if output:
            ids = torch.tensor(output, device=dev)
            out_counts[row].scatter_add_(0, ids, torch.ones(len(output), device=dev))
        if prompt:
            seen[row, torch.tensor(prompt, device=dev)] = True
    seen |= out_counts > 0
    rep = batch.repetition_penalty[:, None].expand_as(logits)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalized, logits))
    logits -= batch.frequency_penalty[:, None] * out_counts
    logits -= batch.presence_penalty[:, None] * (out_counts > 0).float()


def probabilities(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Adjusted logits [N, V] -> the distribution random rows draw from [N, V]:
    temperature, top-k, top-p, min-p (greedy rows get temperature 1; callers take their
    argmax instead)."""
    temp = torch.where(batch.temperature < 1e-5, torch.ones_like(batch.temperature),
                       batch.temperature)
    logits = logits / temp[:, None]
    logits = _top_k_top_p(logits, batch.top_k, batch.top_p, batch.use_top_k, batch.use_top_p)
    probs = torch.softmax(logits, dim=-1)  # [N, V]
    use_min_p = batch.use_min_p
    if use_min_p is None:
        use_min_p = bool((batch.min_p > 0).any())
    if use_min_p:
        floor = batch.min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = torch.where(probs < floor, torch.zeros_like(probs), probs)
    return probs


def race(probs: torch.Tensor, generators: list[torch.Generator], argmax: Argmax,
         shared: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row of probs [N, V] (unnormalized is fine): argmax p / q with
    q ~ Exp(1) from the row's generator -> [N] int64 (shared: `fill_rows`)."""
    q = torch.empty_like(probs)
    fill_rows(q, generators, lambda t, gen: t.exponential_(generator=gen), shared)
    return argmax(probs / q)


def fill_rows(out: torch.Tensor, generators: list[torch.Generator],
              fill: Callable[[torch.Tensor, torch.Generator], object],
              shared: Optional[torch.Generator] = None) -> None:
    """Fill each row of out [N, ...] in place from its generator: the whole tensor from
    `shared` (the runner's generator, which the rows without a seed take; one launch) if
    a row takes it, then each run of consecutive rows of another generator (a seeded
    request's: one row, or a verify step's draft rows) again from its own, at once, so
    a seeded request's numbers are those it would draw alone; without `shared`, every run
    on its own."""
    if shared is not None and any(g is shared for g in generators):
        fill(out, shared)
    start = 0
    for row in range(1, len(generators) + 1):
        if row == len(generators) or generators[row] is not generators[start]:
            if generators[start] is not shared:
                fill(out if row - start == len(generators) else out[start:row],
                     generators[start])
            start = row


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 use_k: Optional[bool] = None, use_p: Optional[bool] = None) -> torch.Tensor:
    use_k = bool((top_k > 0).any()) if use_k is None else use_k
    use_p = bool((top_p < 1).any()) if use_p is None else use_p
    if not (use_k or use_p):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
    vocab = logits.shape[-1]
    if use_k:
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).clamp(max=vocab)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    if use_p:
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the better tokens
        drop = before >= top_p[:, None]  # keep the smallest set reaching p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def gather_logprobs(logprobs: torch.Tensor, tokens: torch.Tensor,
                    num_logprobs: list[Optional[int]]) -> list[Optional[LogprobsEntry]]:
    """logprobs: [N, V]; tokens: [N] -> per row ([chosen, top...], logprobs, ranks)."""
    max_k = max((n or 0) for n in num_logprobs)
    chosen = logprobs.gather(-1, tokens[:, None])  # [N, 1]
    ranks = (logprobs > chosen).sum(dim=-1) + 1  # [N]
    top_vals, top_ids = logprobs.topk(max_k, dim=-1) if max_k else (None, None)
    chosen, ranks, tokens = chosen[:, 0].tolist(), ranks.tolist(), tokens.tolist()
    top_vals = top_vals.tolist() if max_k else None
    top_ids = top_ids.tolist() if max_k else None
    entries: list[Optional[LogprobsEntry]] = []
    for row, n in enumerate(num_logprobs):
        if n is None:
            entries.append(None)
            continue
        ids, vals, rks = [tokens[row]], [chosen[row]], [ranks[row]]
        for j in range(n):
            ids.append(top_ids[row][j])
            vals.append(top_vals[row][j])
            rks.append(j + 1)
        entries.append((ids, vals, rks))
    return entries
