"""The distillation loss (tessera/distill/loss.py): top-k KL against exact formulas."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.distill.data import batch_order
from tessera.distill.loss import distill_sums, topk_kl_per_position


def test_top_k_over_the_whole_vocabulary_is_the_exact_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    top = teacher.topk(11, dim=-1)
    for t in (1.0, 2.0):
        got = topk_kl_per_position(student, top.indices, top.values, t)
        p, q = F.log_softmax(teacher / t, -1), F.log_softmax(student / t, -1)
        assert torch.allclose(got, (p.exp() * (p - q)).sum(-1), atol=1e-5)


def test_truncated_teacher_renormalized_and_zero_only_at_a_match():
    torch.manual_seed(1)
    teacher = torch.randn(1, 3, 20)
    top = teacher.topk(4, dim=-1)
    matched = torch.full((1, 3, 20), -1e4).scatter(-1, top.indices, top.values)
    assert topk_kl_per_position(matched, top.indices, top.values, 1.0).abs().max() < 1e-4
    assert (topk_kl_per_position(teacher, top.indices, top.values, 1.0) > 0).all()


def test_sums_score_masked_positions_and_scale_by_t_squared():
    torch.manual_seed(2)
    student, teacher = torch.randn(1, 4, 9), torch.randn(1, 4, 9)
    tokens = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, True, True, False]])
    top = teacher.topk(9, dim=-1)
    sums = distill_sums(student, tokens, mask, top.indices, top.values, 2.0)
    per = topk_kl_per_position(student, top.indices, top.values, 2.0)[0]
    assert sums.tokens == 2 and torch.allclose(sums.kl, 4 * (per[1] + per[2]))
    ce = F.cross_entropy(student[0, 1:3], tokens[0, 2:4], reduction="sum")
    assert torch.allclose(sums.ce, ce)


def test_batch_order_covers_each_epoch_once_and_is_a_function_of_the_step():
    first = [i for s in range(5) for i in batch_order(10, s, 2, seed=3)]
    assert sorted(first) == list(range(10))
    assert batch_order(10, 7, 3, seed=3) == batch_order(10, 7, 3, seed=3)
    assert len(batch_order(10, 3, 4, seed=0)) == 4  # wraps into the next epoch
