"""The rejection sampler (spec_decode/rejection.py) against exact distributions.

Many independent requests in one call (each its own rows), so one call gives thousands
of draws; the counts are compared with the target's distribution by a chi-square test at
the 0.1% level (seeded, so the outcome is fixed). A wrong rule (accepting with p/q
unclipped, drawing the recovery token from p instead of the residual, ...) fails these by
a wide margin.
"""
from __future__ import annotations

import torch

from tessera.layers.sampler import SamplingBatch
from tessera.spec_decode.rejection import VerifyRows, verify

CHI2_999 = {3: 16.27, 4: 18.47, 5: 20.52, 7: 24.32}  # 0.999 quantiles by degrees of freedom


def batch(rows: int, temperature=1.0, top_k=0, seed=0, logprobs=None) -> SamplingBatch:
    g = torch.Generator().manual_seed(seed)
    f = lambda v: torch.full((rows,), float(v))  # noqa: E731
    return SamplingBatch(
        temperature=f(temperature), top_k=torch.full((rows,), top_k, dtype=torch.int64),
        top_p=f(1.0), min_p=f(0.0), presence_penalty=f(0), frequency_penalty=f(0),
        repetition_penalty=f(1), prompt_token_ids=[[]] * rows, output_token_ids=[[]] * rows,
        generators=[g] * rows, banned_token_ids=[[]] * rows, num_logprobs=[logprobs] * rows,
        all_greedy=temperature == 0, any_penalty=False)


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    return stat, int(keep.sum()) - 1


def draws(p_logits, q_probs, n_requests, k, temperature=1.0, top_k=0, seed=0,
          sampled_drafts=True):
    """n_requests requests, each with k drafts drawn from q (rows 0..k-1) and judged
    against p_logits' rows -> emitted token lists."""
    g = torch.Generator().manual_seed(seed + 1)
    rows_per = k + 1
    logits = p_logits.repeat(n_requests, 1)  # [n * (k + 1), V]
    draft_ids, q_rows = [], []
    for _ in range(n_requests):
        for i in range(k):
            draft_ids.append(int(torch.multinomial(q_probs[i], 1, generator=g)))
            q_rows.append(q_probs[i] if sampled_drafts else torch.zeros_like(q_probs[i]))
        draft_ids.append(-1)
        q_rows.append(torch.zeros_like(q_probs[0]))
    spans = [(r * rows_per, rows_per) for r in range(n_requests)]
    rows = VerifyRows(spans, torch.tensor(draft_ids))
    emitted, _ = verify(logits, batch(len(draft_ids), temperature, top_k, seed),
                        rows, torch.stack(q_rows))
    return emitted, draft_ids


def target_probs(p_logits, temperature=1.0, top_k=0):
    z = p_logits / temperature
    if top_k:
        cut = z.topk(top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < cut, float("-inf"))
    return torch.softmax(z, dim=-1)


def test_first_token_follows_the_target_whatever_the_draft():
    torch.manual_seed(0)
    vocab = 6
    p_logits = torch.randn(3, vocab) * 1.5
    q = torch.softmax(torch.randn(2, vocab) * 1.5, dim=-1)  # a draft that disagrees
    emitted, _ = draws(p_logits, q, 20000, k=2)
    first = torch.bincount(torch.tensor([e[0] for e in emitted]), minlength=vocab).float()
    stat, df = chi2(first, target_probs(p_logits)[0])
    assert stat < CHI2_999[df], stat
    # given draft 1 accepted, the next token follows the target's second row
    second = [e[1] for e in emitted if len(e) > 1]
    counts = torch.bincount(torch.tensor(second), minlength=vocab).float()
    stat, df = chi2(counts, target_probs(p_logits)[1])
    assert stat < CHI2_999[df], stat
    assert 0.2 < len(second) / len(emitted) < 0.95  # rejections happen, and acceptances


def test_filters_apply_to_the_target_before_judging():
    torch.manual_seed(1)
    vocab = 8
    p_logits = torch.randn(2, vocab) * 2
    q = torch.softmax(torch.randn(1, vocab), dim=-1)  # puts mass where top-k cuts
    emitted, _ = draws(p_logits, q, 20000, k=1, temperature=0.7, top_k=4)
    first = torch.bincount(torch.tensor([e[0] for e in emitted]), minlength=vocab).float()
    probs = target_probs(p_logits, 0.7, 4)[0]
    assert first[probs == 0].sum() == 0  # nothing outside the top 4
    stat, df = chi2(first, probs)
    assert stat < CHI2_999[df], stat


def test_deterministic_drafts_are_judged_as_one_hot():
    """n-gram drafts (q one-hot at the draft): accepted with probability p(d)."""
    torch.manual_seed(2)
    vocab = 5
    p_logits = torch.randn(2, vocab)
    q = torch.zeros(1, vocab)
    q[0, 3] = 1.0  # always proposes token 3
    emitted, _ = draws(p_logits, q, 20000, k=1, sampled_drafts=False)
    first = torch.bincount(torch.tensor([e[0] for e in emitted]), minlength=vocab).float()
    probs = target_probs(p_logits)[0]
    stat, df = chi2(first, probs)
    assert stat < CHI2_999[df], stat
    accepted = sum(len(e) == 2 for e in emitted) / len(emitted)
    assert abs(accepted - float(probs[3])) < 0.02


def test_greedy_rows_accept_the_argmax_run_and_emit_the_argmax():
    p_logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 1.0, 4.0],
                             [2.0, 0.0, 0.0]])
    argmaxes = [1, 0, 2, 0]
    rows = VerifyRows([(0, 4)], torch.tensor([1, 0, 1, -1]))  # third draft is wrong
    emitted, _ = verify(p_logits, batch(4, temperature=0), rows)
    assert emitted == [[1, 0, 2]]
    rows = VerifyRows([(0, 4)], torch.tensor(argmaxes[:3] + [-1]))  # all right: bonus
    assert verify(p_logits, batch(4, temperature=0), rows)[0] == [argmaxes]
    one = VerifyRows([(3, 1)], torch.tensor([-1, -1, -1, -1]))  # no drafts: plain sampling
    assert verify(p_logits, batch(4, temperature=0), one)[0] == [[0]]


def test_logprobs_are_the_raw_distributions_of_the_emitted_tokens():
    p_logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 1.0, 4.0]])
    rows = VerifyRows([(0, 3)], torch.tensor([1, 2, -1]))  # draft 2 rejected (argmax 0)
    emitted, entries = verify(p_logits, batch(3, temperature=0, logprobs=1), rows)
    assert emitted == [[1, 0]]
    raw = torch.log_softmax(p_logits, dim=-1)
    assert [e[0][0] for e in entries[0]] == [1, 0]  # the chosen tokens first
    assert abs(entries[0][0][1][0] - float(raw[0, 1])) < 1e-6
    assert abs(entries[0][1][1][0] - float(raw[1, 0])) < 1e-6
