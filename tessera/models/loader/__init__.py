"""Model loading: build the architecture's class on the worker's device, then fill it.

Flow: `load_model(config, device, dtype, context)`: the class from the registry
(models/registry.py) is built in the worker's layer context (layers/context.py: ops,
kernel switches, linear methods) under the target device and dtype, then fed (name,
tensor) pairs from the checkpoint into `model.load_weights` (each parameter's
weight_loader shards and copies its piece): safetensors.py for a Hugging Face folder,
gguf.py for a GGUF file (its Q8_0 / Q4_0 / Q4_1 matrices kept quantized), dummy.py
for random weights; a quantized folder's layers (fp8, GPTQ) come through
prequantized.py, each layer's parts gathered into one QuantizedWeight. Last, each linear layer's method processes its weights once
(`process_weights_after_loading`). Then identical tensors are stored once (dedup.py) and,
with `cpu_offload_gb`, the layers offload.py planned (pricing a copy of the model built on
the meta device), built in CPU memory and loaded straight into their store, are streamed
in each step.
The source comes resolved in the config (config.model_info): nothing here reads the
checkpoint's metadata again.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from tessera.config import EngineConfig
from tessera.layers.context import LayerContext, building
from tessera.models.registry import model_class


def load_model(config: EngineConfig, device: torch.device, dtype: torch.dtype,
               context: LayerContext) -> nn.Module:
    info = config.info
    plan = None
    if config.offload.cpu_offload_gb:  # priced on the meta device, then built for real
        from tessera.models.loader.offload import layer_bytes, plan_offload
        plan = plan_offload(layer_bytes(_build(info, torch.device("meta"), dtype, context)),
                            config.offload.cpu_offload_gb)
        context.offloaded = frozenset(plan.layers)
    model = _build(info, device, dtype, context)
    store = None
    if plan is not None:  # the offloaded layers load straight into their store
        from tessera.models.loader.offload import place_in_store
        store = place_in_store(model, plan, config.offload.offload_dir, device)
    if info.kind == "dummy":
        from tessera.models.loader.dummy import fill_random
        fill_random(model, config.model.seed, device)
    elif info.kind == "gguf":
        from tessera.models.loader.gguf import count_gguf_tensors, iter_gguf_weights
        model.load_weights(_progress(iter_gguf_weights(info.path, info.arch),
                                     count_gguf_tensors(info.path)))
    else:
        from tessera.models.loader.safetensors import count_safetensors, iter_safetensors
        weights = iter_safetensors(info.path)
        if info.quant_method:  # a quantized folder: each layer's parts as one weight
            from tessera.models.loader.prequantized import assemble
            spec = next(iter(info.quant_layers.values()))
            weights = assemble(weights, "fp8" if info.quant_method == "fp8" else "gptq",
                               group=int(spec.partition("/")[2] or 0),
                               zero_offset=0 if info.quant_method == "gptq_v2" else 1)
        model.load_weights(_progress(weights, count_safetensors(info.path)))
    for module in model.modules():
        method = getattr(module, "method", None)
        if method is not None:
            method.process_weights_after_loading(module)
    from tessera.models.loader.dedup import share_identical
    model.dedup_saved_bytes = share_identical(model, device, _offloaded(model, plan))
    if plan is not None:
        from tessera.models.loader.offload import attach_stream
        attach_stream(model, plan, store, device)
    return model.eval()


def _offloaded(model: nn.Module, plan) -> set[int]:
    if plan is None:
        return set()
    from tessera.models.loader.offload import offloaded_param_ids
    return offloaded_param_ids(model, plan)


def _build(info, device: torch.device, dtype: torch.dtype, context: LayerContext) -> nn.Module:
    old_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device), building(context):
            return model_class(info.arch)(info.arch)
    finally:
        torch.set_default_dtype(old_dtype)


def _progress(weights: Iterator[tuple[str, torch.Tensor]], total: int):
    """A progress bar over the checkpoint's tensors."""
    from tqdm import tqdm
    with tqdm(weights, desc="Loading weights", unit="tensor", total=total, mininterval=1.0) as bar:
        yield from bar
