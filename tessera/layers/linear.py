"""Linear layers that shard and fill themselves while loading.

Objects: ReplicatedLinear; ColumnParallelLinear (output dim split over TP ranks);
MergedColumnParallelLinear (several column outputs stacked, e.g. [gate | up]);
QKVParallelLinear (q, k, v stacked, split by heads; KV heads replicated when there are
fewer than ranks); RowParallelLinear (input dim split, all-reduce after).
`linear(x, weight, bias)` is the product they all run: on a Hopper-class NVIDIA GPU
(where it was tuned), a product of at most 16 rows (a small decode batch, or a prompt that
short) in bf16/fp16 with a weight of the same dtype goes to the skinny GEMM kernel
(kernels/skinny_gemm.py), which reads the weight faster than cuBLAS does at that size.
`set_skinny_gemm` (or env TESSERA_SKINNY_GEMM) switches it: "auto", "off", or "always"
(any device and dtype; on CPU that needs TRITON_INTERPRET=1 set before triton is
imported, as the tests do). MergedColumnParallelLinear.forward_gated fuses the gated
MLP's SiLU-and-mul into it; `uses_qkv_rope` says when a decode step's q/k/v projection
takes it with rotary and the cache write fused (`set_qkv_rope` switches that), and
`uses_norm_fusion` when its norms run inside the projections (`set_norm_fusion`).
Each parameter carries `weight_loader(param, loaded, shard_id=None)`: the loader hands
it the checkpoint tensor (or a lazy slice of the file) and the layer reads its own part.
Models never see whether they are sharded; a quantized variant plugs in the same way.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tessera.distributed.parallel_state import all_reduce, tp_rank, tp_size
from tessera.kernels.pdl import nvidia_sm90_or_later
from tessera.kernels.skinny_gemm import MAX_ROWS, skinny_gemm
from tessera.layers.activation import SiluAndMul
from tessera.models.weight_utils import materialize, narrow, shape_of

_SKINNY_MODES = ("auto", "off", "always")
_skinny_mode = "auto"


def set_skinny_gemm(mode: str) -> None:
    global _skinny_mode
    if mode not in _SKINNY_MODES:
        raise ValueError(f"skinny GEMM mode must be one of {_SKINNY_MODES}, got {mode!r}")
    _skinny_mode = mode


set_skinny_gemm(os.environ.get("TESSERA_SKINNY_GEMM", "auto"))


def uses_skinny(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if (_skinny_mode == "off" or x.dim() != 2 or not 0 < x.shape[0] <= MAX_ROWS
            or weight.dtype != x.dtype or 0 in weight.shape):
        return False
    if _skinny_mode == "always":
        return True
    return (x.dtype in (torch.bfloat16, torch.float16)
            and nvidia_sm90_or_later(x.device))  # the shared memory its configs need


_qkv_rope = os.environ.get("TESSERA_QKV_ROPE", "1") != "0"


def set_qkv_rope(on: bool) -> None:
    global _qkv_rope
    _qkv_rope = on


def uses_qkv_rope(x: torch.Tensor, qkv_weight: torch.Tensor) -> bool:
    """Whether a decode step's q/k/v projection also rotates and writes the KV cache
    (kernels/skinny_gemm.py: skinny_qkv_rope): where the skinny GEMM runs, unless
    switched off (`set_qkv_rope(False)` or env TESSERA_QKV_ROPE=0)."""
    return _qkv_rope and uses_skinny(x, qkv_weight)


_norm_fusion = os.environ.get("TESSERA_NORM_FUSION", "1") != "0"


def set_norm_fusion(on: bool) -> None:
    global _norm_fusion
    _norm_fusion = on


def uses_norm_fusion(x: torch.Tensor, qkv_weight: torch.Tensor) -> bool:
    """Whether a decode step's RMSNorms are split across the projections around them
    (kernels/norm_epilogue.py; no norm kernel): where q/k/v takes rotary, on one tensor-
    parallel rank (the o and down products must be whole before the residual add), not in
    float16 (g * s is rounded before the 1/rms scale, so a large residual could overflow
    its range where the normed value would not), unless switched off
    (`set_norm_fusion(False)` or env TESSERA_NORM_FUSION=0)."""
    return (_norm_fusion and tp_size() == 1 and x.dtype != torch.float16
            and uses_qkv_rope(x, qkv_weight))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
    """x [T, K] @ weight [N, K]^T (+ bias) -> [T, N]."""
    if uses_skinny(x, weight):
        return skinny_gemm(x, weight, bias)
    return F.linear(x, weight, bias)


def _check_shape(name: str, param: torch.Tensor, loaded) -> None:
    if tuple(param.shape) != shape_of(loaded):
        raise ValueError(f"{name}: checkpoint shape {shape_of(loaded)} does not fit "
                         f"parameter shape {tuple(param.shape)}")


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        _check_shape(type(self).__name__, param, loaded)
        param.data.copy_(materialize(loaded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    pass


class ColumnParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        if out_features % self.tp_size:
            raise ValueError(f"output size {out_features} is not divisible by TP={self.tp_size}")
        super().__init__(in_features, out_features // self.tp_size, bias)

    def weight_loader(self, param, loaded, shard_id=None):
        size = param.shape[0]
        super().weight_loader(param, narrow(loaded, 0, self.tp_rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias)

    def weight_loader(self, param, loaded, shard_id: Optional[int] = None):
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        piece = narrow(loaded, 0, self.tp_rank * size, size)
        _check_shape(f"shard {shard_id}", param.data.narrow(0, offset, size), piece)
        param.data.narrow(0, offset, size).copy_(materialize(piece))

    def forward_gated(self, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """act(x @ [gate | up]^T) for a [gate, up] pair: silu(gate) * up [T, I]. A skinny
        step fuses the activation into the GEMM's epilogue; others run act after it."""
        if (isinstance(act, SiluAndMul) and len(self.output_sizes) == 2
                and self.output_sizes[0] == self.output_sizes[1]
                and self.bias is None and uses_skinny(x, self.weight)):
            return skinny_gemm(x, self.weight, gated=True)
        return act(self.forward(x))


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False):
        tp = tp_size()
        if num_heads % tp:
            raise ValueError(f"{num_heads} attention heads are not divisible by TP={tp}")
        self.head_dim = head_dim
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)  # replicated when fewer than ranks
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias)

    def weight_loader(self, param, loaded, shard_id: Optional[str] = None):
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard_id]
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        piece = narrow(loaded, 0, rank * size, size)
        _check_shape(f"{shard_id}_proj", param.data.narrow(0, offset, size), piece)
        param.data.narrow(0, offset, size).copy_(materialize(piece))


class RowParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        if in_features % self.tp_size:
            raise ValueError(f"input size {in_features} is not divisible by TP={self.tp_size}")
        super().__init__(in_features // self.tp_size, out_features, bias)

    def weight_loader(self, param, loaded, shard_id=None):
        if param.dim() == 2:
            size = param.shape[1]
            loaded = narrow(loaded, 1, self.tp_rank * size, size)
        elif self.tp_rank != 0:  # the bias is added once, on rank 0
            loaded = torch.zeros(shape_of(loaded))
        super().weight_loader(param, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce(linear(x, self.weight, self.bias))
