"""LinearMethod: how a linear layer holds its weight and computes with it.

The linear layers (layers/linear.py) own one each, chosen when the model is built
(layers/context.py: `linear_method(prefix)`, the seam where a quantization policy picks a
format per layer). The layer keeps the parallel layout (which rows or columns a rank
holds) and hands the method each tensor; the method keeps the format:
- `create_weights(layer, in_features, out_features, bias)` registers the parameters (each
  with `weight_loader = layer.weight_loader`, so loading shards the same way);
- `store(layer, param, row_offset, rows, loaded, what)` keeps a checkpoint piece: rows
  [row_offset, row_offset + rows) of param (the layer chose the rows and sliced the
  piece; the method converts it: a quantized method quantizes it as it arrives);
- `fill_random(layer, generator)`: random weights of the layer's shape (benchmarks);
- `process_weights_after_loading(layer)` may repack them once every tensor is in;
- `precision(layer)`: the format's name for accounting ("bfloat16", "int8", ...);
- `apply(layer, x)`: x [T, in] -> [T, out] (bias added).
Epilogues the fused decode paths need (a method that has none says so with `fuses_*`,
and the model then runs the plain ops):
- `apply_gated(layer, x, pending, eps)`: silu(gate) * up of a [gate | up] layer;
- `apply_qkv_rope(...)`: the q/k/v projection with rotary embedding and the KV-cache write;
- `apply_add_norm(layer, x, residual, norm_weight)`: residual + x @ W^T, with the RMSNorm
  (weight norm_weight) after it left pending for the next projection (`pending` in the
  others: what this returned; `eps` that norm's epsilon).
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from tessera.models.weight_utils import dense, shape_of


def layer_name(layer: nn.Module) -> str:
    return getattr(layer, "prefix", "") or type(layer).__name__


class LinearMethod(abc.ABC):
    @abc.abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None: ...

    def logical_shape(self, layer: nn.Module, param: torch.Tensor) -> tuple[int, ...]:
        """The shape param stands for in the checkpoint (a packed format's differs)."""
        return tuple(param.shape)

    def check_piece(self, layer: nn.Module, param: torch.Tensor, rows: int, loaded,
                    what: str = "") -> None:
        """That loaded is `rows` rows of param's logical shape, or a clear error naming the
        layer (and `what`: which piece of it)."""
        want = (rows,) + self.logical_shape(layer, param)[1:]
        if shape_of(loaded) != want:
            raise ValueError(f"{layer_name(layer)}{what}: checkpoint shape {shape_of(loaded)} "
                             f"does not fit parameter shape {want}")

    def store(self, layer: nn.Module, param: nn.Parameter, row_offset: int, rows: int, loaded,
              what: str = "") -> None:
        """param[row_offset : row_offset + rows] = loaded (a checkpoint piece of that many
        rows), as a plain copy (a quantized piece dequantized)."""
        self.check_piece(layer, param, rows, loaded, what)
        param.data.narrow(0, row_offset, rows).copy_(dense(loaded, param.dtype))

    def fill_random(self, layer: nn.Module, generator: torch.Generator) -> None:
        """Weights from N(0, 0.02), biases 0."""
        for name, p in layer.named_parameters(recurse=False):
            if name == "weight":
                p.data.normal_(0.0, 0.02, generator=generator)
            else:
                p.data.zero_()

    def precision(self, layer: nn.Module) -> str:
        return str(layer.weight.dtype).removeprefix("torch.")

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        pass

    @abc.abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor: ...

    def fuses_gated(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return False

    def apply_gated(self, layer: nn.Module, x: torch.Tensor, pending=None,
                    eps: float = 0.0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no gated epilogue")

    def fuses_rope(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return False

    def apply_qkv_rope(self, layer: nn.Module, x: torch.Tensor, positions: torch.Tensor,
                       cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor, num_heads: int, num_kv_heads: int,
                       pending=None, eps: float = 0.0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no rotary epilogue")

    def fuses_norms(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return False

    def apply_add_norm(self, layer: nn.Module, x: torch.Tensor, residual: torch.Tensor,
                       norm_weight: torch.Tensor):
        raise NotImplementedError(f"{type(self).__name__} has no add-norm epilogue")
