"""Distillation losses over the teacher's top-k logits.

Objects: `LossSums` (summed KL, summed cross-entropy, tokens scored: sums, so gradient
accumulation weights every scored token alike) and `distill_sums(student_logits, tokens,
mask, top_idx, top_logits, temperature)`.

The teacher's distribution at temperature T is kept on its top-k tokens only and
renormalized there: p_i = softmax(z_t / T) over the k kept logits. The student's is the
full softmax at T, read at those k tokens: log q_i = z_s,i / T - logsumexp(z_s / T). The
loss KL(p || q) = sum_i p_i (log p_i - log q_i) is a proper divergence (q's mass outside
the k tokens counts against it) and is scaled by T^2 so its gradients keep their size
whatever T (Hinton et al. 2015). Memory stays bounded by k: the teacher's full
distribution is never stored.

Shapes: student_logits [B, L, V]; tokens, mask [B, L] (mask: position t's prediction of
token t + 1 is scored); top_idx [B, L, k] int64, top_logits [B, L, k] float32, position
t's teacher logits (its prediction of token t + 1).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class LossSums:
    kl: torch.Tensor  # scalar, summed over scored positions (T^2 included)
    ce: torch.Tensor  # scalar, summed negative log-likelihood of the next tokens
    tokens: int


def topk_kl_per_position(student_logits: torch.Tensor, top_idx: torch.Tensor,
                         top_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher top-k at T || student at T) per position: [B, L]."""
    scaled = student_logits.float() / temperature  # [B, L, V]
    log_q = scaled.gather(-1, top_idx) - torch.logsumexp(scaled, dim=-1, keepdim=True)
    log_p = F.log_softmax(top_logits.float() / temperature, dim=-1)  # [B, L, k]
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def distill_sums(student_logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                 top_idx: torch.Tensor, top_logits: torch.Tensor,
                 temperature: float) -> LossSums:
    m = mask[:, :-1]  # [B, L-1]
    kl = topk_kl_per_position(student_logits[:, :-1], top_idx[:, :-1], top_logits[:, :-1],
                              temperature)
    ce = F.cross_entropy(student_logits[:, :-1].float().flatten(0, 1),
                         tokens[:, 1:].flatten(), reduction="none").view_as(m)
    return LossSums(kl=(kl * m).sum() * temperature ** 2, ce=(ce * m).sum(),
                    tokens=int(m.sum()))
