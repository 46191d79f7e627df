"""Vocabulary-parallel token embedding and LM head (the head may share the embedding).

With TP ranks, each holds a contiguous slice of the vocabulary's rows (the vocabulary
padded to a multiple of the rank count). Embedding: each rank looks up the ids in its
slice (others give zeros) and an all-reduce sums them. LM head: each rank computes the
logits of its slice and an all-gather joins them. With one rank, both are plain. The head
computes through the dense linear method (a skinny GEMM for a few rows where it runs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.distributed.parallel_state import all_gather_last, all_reduce, tp_rank, tp_size
from tessera.layers.context import current
from tessera.models.weight_utils import dense, narrow, shape_of


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size, self.tp_rank, self.tp_size = vocab_size, tp_rank(), tp_size()
        self.shard = -(-vocab_size // self.tp_size)  # rows per rank
        self.start = self.tp_rank * self.shard
        self.weight = nn.Parameter(torch.empty(self.shard, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        if shape_of(loaded) != (self.vocab_size, param.shape[1]):
            raise ValueError(f"embedding: checkpoint shape {shape_of(loaded)} does not fit "
                             f"({self.vocab_size}, {param.shape[1]})")
        size = min(self.shard, self.vocab_size - self.start)
        rows = dense(narrow(loaded, 0, self.start, size), param.dtype)
        param.data.zero_()
        param.data[:rows.shape[0]].copy_(rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] -> [T, hidden]."""
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.shard)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside[:, None], 0))


class LMHead(VocabEmbedding):
    """Computes with the dense linear method (layers/context.py): a quantization policy
    leaves the head in 16 bits (and a tied head is the embedding table itself)."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__(vocab_size, hidden_size)
        self.register_parameter("bias", None)
        self.method = current().dense_method

    def forward(self, hidden: torch.Tensor, as_float: bool = True) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in float32 (as_float=False: in the
        weights' dtype, which is all an argmax needs: widening changes no order)."""
        logits = self.method.apply(self, hidden)
        if self.tp_size > 1:
            logits = all_gather_last(logits)[:, :self.vocab_size]
        return logits.float() if as_float else logits
