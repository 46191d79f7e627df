"""Linear layers that shard and fill themselves while loading, and own a LinearMethod.

Objects: ReplicatedLinear; ColumnParallelLinear (output dim split over TP ranks);
MergedColumnParallelLinear (several column outputs stacked, e.g. [gate | up]);
QKVParallelLinear (q, k, v stacked, split by heads; KV heads replicated when there are
fewer than ranks); RowParallelLinear (input dim split, all-reduce after).
The layer decides the parallel layout: its `weight_loader(param, loaded, shard_id=None)`
receives a checkpoint tensor (or a lazy slice of the file) and keeps its own part. Its
LinearMethod (quant/base.py; chosen when the model is built, layers/context.py) decides
the format and computes: `forward(x)`, and the fused decode paths' epilogues, offered as
layer methods: `forward_gated` (SiLU-and-mul of [gate | up]), `forward_qkv_rope` (rotary
and the KV-cache write), `forward_add_norm` (residual add, next RMSNorm left pending),
each behind the method's `fuses_*` answer. Models never see a raw weight, nor whether it
is sharded or quantized.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tessera.distributed.parallel_state import all_reduce, tp_rank, tp_size
from tessera.layers.activation import SiluAndMul
from tessera.layers.context import current
from tessera.models.weight_utils import narrow, shape_of


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, prefix: str = ""):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.prefix = prefix
        self.method = current().linear_method(prefix)
        self.method.create_weights(self, in_features, out_features, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        rows = self.method.logical_shape(self, param)[0]
        self.method.store(self, param, 0, rows, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)  # [T, in] -> [T, out]

    def fuses_norms(self, x: torch.Tensor) -> bool:
        """Whether a decode step of x may leave its RMSNorms to the projections around
        them (kernels/norm_epilogue.py), asked of the first q/k/v projection."""
        return self.method.fuses_norms(self, x)

    def forward_add_norm(self, x: torch.Tensor, residual: torch.Tensor, norm: nn.Module):
        """residual + x @ W^T, and the RMSNorm `norm` after it left pending (a PendingNorm
        of the kernels: scaled, parts, residual) for the next projection."""
        return self.method.apply_add_norm(self, x, residual, norm.weight)


class ReplicatedLinear(LinearBase):
    pass


class ColumnParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 prefix: str = ""):
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        if out_features % self.tp_size:
            raise ValueError(f"output size {out_features} is not divisible by TP={self.tp_size}")
        super().__init__(in_features, out_features // self.tp_size, bias, prefix)

    def weight_loader(self, param, loaded, shard_id=None):
        size = param.shape[0]
        super().weight_loader(param, narrow(loaded, 0, self.tp_rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False,
                 prefix: str = ""):
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, prefix)

    def weight_loader(self, param, loaded, shard_id: Optional[int] = None):
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        piece = narrow(loaded, 0, self.tp_rank * size, size)
        self.method.store(self, param, offset, size, piece, f" (shard {shard_id})")

    def forward_gated(self, x: torch.Tensor, act: nn.Module, pending=None,
                      eps: float = 0.0) -> torch.Tensor:
        """act(x @ [gate | up]^T) for a [gate, up] pair: silu(gate) * up [T, I]. Where the
        method can, SiLU-and-mul runs in the product's epilogue; with `pending` (a
        PendingNorm, x its scaled input) the product is of the pending RMSNorm (eps)."""
        if pending is not None:
            return self.method.apply_gated(self, x, pending, eps)
        if (isinstance(act, SiluAndMul) and len(self.output_sizes) == 2
                and self.output_sizes[0] == self.output_sizes[1]
                and self.method.fuses_gated(self, x)):
            return self.method.apply_gated(self, x)
        return act(self.forward(x))


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, prefix: str = ""):
        tp = tp_size()
        if num_heads % tp:
            raise ValueError(f"{num_heads} attention heads are not divisible by TP={tp}")
        self.head_dim = head_dim
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)  # replicated when fewer than ranks
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias, prefix)

    def weight_loader(self, param, loaded, shard_id: Optional[str] = None):
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard_id]
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        piece = narrow(loaded, 0, rank * size, size)
        self.method.store(self, param, offset, size, piece, f" ({shard_id}_proj)")

    def fuses_rope(self, x: torch.Tensor) -> bool:
        """Whether this step's projection of x also rotates q and k and writes the cache."""
        return self.method.fuses_rope(self, x)

    def forward_qkv_rope(self, x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
                         kv_cache: torch.Tensor, slot_mapping: torch.Tensor, pending=None,
                         eps: float = 0.0) -> torch.Tensor:
        """x [T, H] -> rotated q [T, Hq, D]; rotated k and v written to their cache slots.
        pending, eps: x is a PendingNorm's scaled input (see forward_gated)."""
        return self.method.apply_qkv_rope(self, x, positions, cos_sin, kv_cache, slot_mapping,
                                          self.num_heads, self.num_kv_heads, pending, eps)


class RowParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 prefix: str = ""):
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        if in_features % self.tp_size:
            raise ValueError(f"input size {in_features} is not divisible by TP={self.tp_size}")
        super().__init__(in_features // self.tp_size, out_features, bias, prefix)

    def weight_loader(self, param, loaded, shard_id=None):
        shape = self.method.logical_shape(self, param)
        if len(shape) == 2:
            size = shape[1]
            loaded = narrow(loaded, 1, self.tp_rank * size, size)
        elif self.tp_rank != 0:  # the bias is added once, on rank 0
            loaded = torch.zeros(shape_of(loaded))
        super().weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce(super().forward(x))
