"""Quantize a built dense linear layer in place, and put it back.

Objects: `quantized_method(context, kind, group_size)` (a QuantizedLinearMethod on the
layer context's ops, kernel switches and device: layers/context.py), DenseState (what a
layer held before: its method, parameters and buffers), `quantize_layer(layer, method)`
-> DenseState, `restore_layer(layer, state)`, and `quantized_layers(layers, method)`, a
context manager doing both for several layers.

Flow of `quantize_layer`: the layer's current 16-bit (or float32) weight and bias are
kept aside; the quantized method registers its parameters on the layer (its
`create_weights`, under the weight's device and dtype, as the model loader builds them:
models/loader/__init__.py), `store`s the whole weight as one piece of all the rows (the
same call the loader makes per checkpoint piece; quantizing is row-local, so one piece or
several give the same result), copies the bias and runs `process_weights_after_loading`.
The layer then computes with the new method at once: models read no weight themselves.
`restore_layer` puts the original parameters, buffers and method back (the dense weight
was never changed). Only a layer whose method is the dense one can be converted: a linear
layer or the LM head (layers/embedding.py; a tied head's table stays the embedding's, as
only the head's own parameters are replaced), never the embedding.
Used by quant/sensitivity.py (one layer at a time) and tests (that a converted layer
computes what a layer quantized at load does).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from tessera.quant.base import LinearMethod, layer_name
from tessera.quant.formats import QuantizedWeight
from tessera.quant.quantized import QuantizedLinearMethod
from tessera.quant.unquantized import UnquantizedLinearMethod


def quantized_method(context, kind: str, group_size: int = 0) -> QuantizedLinearMethod:
    """The method for kind ("int8", "fp8", "int4") on a LayerContext's ops and device;
    group_size: int4's group along K (int8 and fp8 are per output channel)."""
    return QuantizedLinearMethod(kind, group_size if kind == "int4" else 0, context.kernel,
                                 context.ops, context.device)


@dataclasses.dataclass
class DenseState:
    method: LinearMethod
    parameters: dict[str, nn.Parameter]
    buffers: dict[str, torch.Tensor]


def is_dense(layer: nn.Module) -> bool:
    method = getattr(layer, "method", None)
    return (isinstance(method, UnquantizedLinearMethod)
            and not isinstance(method, QuantizedLinearMethod))


def quantize_layer(layer: nn.Module, method: QuantizedLinearMethod,
                   quantized: Optional[QuantizedWeight] = None) -> DenseState:
    """Converts a dense linear layer to `method`'s format in place; returns what it held.
    quantized: the weight already in that format (quant/gptq.py's), stored as it is."""
    if not is_dense(layer):
        raise ValueError(f"{layer_name(layer)} is not a dense linear layer "
                         f"({type(getattr(layer, 'method', None)).__name__}): only a 16-bit "
                         f"or float32 layer can be quantized in place.")
    weight, bias = layer.weight, layer.bias
    out_features, in_features = weight.shape
    state = DenseState(layer.method, dict(layer._parameters), dict(layer._buffers))
    layer._parameters.clear()
    layer._buffers.clear()
    old_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(weight.dtype)
        with torch.device(weight.device):
            method.create_weights(layer, in_features, out_features, bias is not None)
        method.store(layer, layer.weight, 0, out_features,
                     weight.detach() if quantized is None else quantized)
        if bias is not None:
            layer.bias.data.copy_(bias.data)
        method.process_weights_after_loading(layer)
    except BaseException:
        restore_layer(layer, state)
        raise
    finally:
        torch.set_default_dtype(old_dtype)
    layer.method = method
    return state


def restore_layer(layer: nn.Module, state: DenseState) -> None:
    """Puts back what quantize_layer took away."""
    layer._parameters.clear()
    layer._parameters.update(state.parameters)
    layer._buffers.clear()
    layer._buffers.update(state.buffers)
    layer.method = state.method


@contextlib.contextmanager
def quantized_layers(layers: Iterable[nn.Module],
                     method: QuantizedLinearMethod) -> Iterator[None]:
    """Within the block, every layer given computes in method's format."""
    done: list[tuple[nn.Module, DenseState]] = []
    try:
        for layer in layers:
            done.append((layer, quantize_layer(layer, method)))
        yield
    finally:
        for layer, state in reversed(done):
            restore_layer(layer, state)
