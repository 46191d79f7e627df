"""Vocabulary-parallel token embedding and LM head (the head may share the embedding).

With TP ranks, each holds a contiguous slice of the vocabulary's rows (the vocabulary
padded to a multiple of the rank count). Embedding: each rank looks up the ids in its
slice (others give zeros) and an all-reduce sums them. LM head: each rank computes the
logits of its slice and an all-gather joins them. With one rank, both are plain. The head
computes through its linear method: the dense one (a skinny GEMM for a few rows where it
runs), or a quantized one where the policy names it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.distributed.parallel_state import all_gather_last, all_reduce, tp_rank, tp_size
from tessera.layers.context import current
from tessera.models.weight_utils import dense, narrow, shape_of
from tessera.quant_policy import HEAD


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
    """The logits, hidden @ W^T, through a linear method (layers/context.py): the dense one
    (a tied head is then the embedding table itself) unless the quantization policy names
    the head (quant_policy.py HEAD: --lm-head-quantization); a quantized head holds its own
    rows of its own format (a tied checkpoint's embedding loads into it too:
    models/llama.py), padded rows zero."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__(vocab_size, hidden_size)
        self.prefix, self.in_features = HEAD, hidden_size
        context = current()
        self.method = context.linear_method(HEAD)
        self.quantized = self.method is not context.dense_method
        if not self.quantized:
            self.register_parameter("bias", None)
            return
        del self.weight
        self.method.create_weights(self, hidden_size, self.shard, bias=False)
        for p in self.parameters(recurse=False):
            p.data.zero_()  # the rows past the vocabulary (TP padding) give logit 0

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        if not self.quantized:
            return super().weight_loader(param, loaded, shard_id)
        if shape_of(loaded) != (self.vocab_size, self.in_features):
            raise ValueError(f"{HEAD}: checkpoint shape {shape_of(loaded)} does not fit "
                             f"({self.vocab_size}, {self.in_features})")
        rows = min(self.shard, self.vocab_size - self.start)
        self.method.store(self, param, 0, rows, narrow(loaded, 0, self.start, rows))

    def forward(self, hidden: torch.Tensor, as_float: bool = True) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in float32 (as_float=False: in the
        weights' dtype, which is all an argmax needs: widening changes no order)."""
        logits = self.method.apply(self, hidden)
        if self.tp_size > 1:
            logits = all_gather_last(logits)[:, :self.vocab_size]
        return logits.float() if as_float else logits
