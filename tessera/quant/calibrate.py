"""Calibrated quantization at load: the int4 layers quantized by GPTQ (quant/gptq.py)
against the inputs a calibration text gives them (QuantConfig.quantization_calibration).

Objects: `check_calibration(config, policy)` (a clear error where it cannot apply),
`deferred_int4(context)` -> (the context a model loads in: its int4 linear layers
dense, everything else as the policy says; {layer prefix: the int4 method it defers}),
`calibration_windows(config, tokens)` (the text as token windows of up to WINDOW),
`hessian_chunks(layers, budget)`, `calibrate(runner, deferred)`, HESSIAN_BUDGET,
ACT_ORDER, WINDOW.

Flow (worker/model_runner.py, after the model is loaded and before the KV cache, the
memory profile and CUDA graphs): the deferred layers, in model order, are cut into chunks
whose Hessians (float32 [K, K] each) fit HESSIAN_BUDGET bytes. Per chunk: a
HessianRecorder goes on each layer; every window runs through the model as one prefill
(`runner.run_prompt`: a temporary KV cache, nothing kept); then each layer's 16-bit weight
is quantized by `gptq_int4` (ACT_ORDER) against its Hessian and the layer converted in place
(quant/convert.py), its Hessian freed. A later chunk's inputs come through the layers
already quantized (GPTQ's sequential order, a chunk at a time). Layers of other formats
(int8, fp8, MoE experts) and an int4 LM head load quantized as usual (rounded to
nearest); layers the policy keeps 16-bit are untouched. Stacked q/k/v and gate/up are
one matrix with one Hessian (their rows share the input), and a tensor-parallel rank
quantizes its own shard against the inputs it sees.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import torch
from torch import nn

from tessera.quant.gptq import HessianRecorder, gptq_int4
from tessera.quant_policy import HEAD

logger = logging.getLogger(__name__)
HESSIAN_BUDGET = 4 << 30  # bytes of Hessians held at once (float32 [K, K] a layer)
# GPTQ's columns largest input first (quant/gptq.py): Qwen2.5-Coder-0.5B int4/128,
# perplexity +5.93% in order, +5.73% with it, at damping 0.01 (round to nearest: +7.81%)
ACT_ORDER = True
WINDOW = 512  # tokens a calibration window (one prefill each)


def check_calibration(config, policy) -> None:
    """ValueError where calibration cannot apply: no linear layer of the policy
    (quant_policy.py) is int4 (an int4 LM head is rounded, not calibrated), or decoder
    layers are offloaded (--cpu-offload-gb)."""
    if not any(spec.startswith("int4") for spec in policy.layer_specs):
        raise ValueError("quantization_calibration runs GPTQ on int4 layers, and no layer is "
                         "int4 (an int4 LM head is not calibrated): add --quantization int4 "
                         "(or a policy file with int4 layers).")
    if config.offload.cpu_offload_gb:
        raise ValueError("quantization_calibration does not work with cpu_offload_gb: the "
                         "offloaded layers are stored before calibration could change them.")


def deferred_int4(context) -> tuple[object, dict[str, object]]:
    """(load context, {prefix: int4 method}): the LayerContext (layers/context.py) a model
    is built in so that its int4 linear layers load dense for GPTQ; the methods they get
    after calibration."""
    deferred: dict[str, object] = {}

    def linear_method(prefix: str):
        method = context.linear_method(prefix)
        if getattr(method, "kind", None) == "int4" and prefix != HEAD:  # the head: rounded
            deferred[prefix] = method
            return context.dense_method
        return method
    return dataclasses.replace(context, linear_method=linear_method), deferred


def calibration_windows(config, tokens: int, window: int = WINDOW) -> list[list[int]]:
    """The calibration file's first `tokens` tokens as windows of up to `window`
    (QuantConfig.quantization_calibration, read with the model's tokenizer)."""
    from tessera.frontend.tokenizer import load_tokenizer
    from tessera.models.source import ModelSource
    from tessera.quant.perplexity import read_windows
    info = config.info
    tokenizer = load_tokenizer(config.model, ModelSource(info.kind, info.path, info.arch))
    path = config.quant.quantization_calibration
    windows = read_windows(tokenizer, path, tokens, min(window, tokens))
    if not windows:
        raise ValueError(f"quantization_calibration {path!r} has fewer than "
                         f"{min(window, tokens)} tokens: too little text to calibrate on.")
    return windows


def hessian_chunks(layers: Sequence[nn.Module], budget: int) -> list[list[nn.Module]]:
    """layers in order, cut into runs whose Hessians fit budget bytes (at least one each)."""
    chunks: list[list[nn.Module]] = [[]]
    used = 0
    for layer in layers:
        size = 4 * layer.in_features ** 2
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(layer)
        used += size
    return [c for c in chunks if c]


@torch.inference_mode()
def calibrate(runner, deferred: dict[str, object]) -> int:
    """GPTQ for the runner's deferred int4 layers (see the module's doc); returns how many
    layers were quantized."""
    from tessera.quant.convert import quantize_layer
    from tessera.layers.linear import LinearBase
    layers = [m for m in runner.model.modules()
              if isinstance(m, LinearBase) and m.prefix in deferred]
    if not layers:
        return 0
    start = time.perf_counter()
    quant = runner.config.quant
    windows = calibration_windows(runner.config, quant.calibration_tokens, min(
        WINDOW, runner.config.scheduler.max_num_batched_tokens, runner.max_model_len - 1))
    chunks = hessian_chunks(layers, HESSIAN_BUDGET)
    for chunk in chunks:
        for layer in chunk:
            layer.method = HessianRecorder(layer.method, layer.in_features, layer.weight.device)
        try:
            for ids in windows:
                runner.run_prompt(ids)
        finally:
            recorders = [layer.method for layer in chunk]
            for layer, rec in zip(chunk, recorders):
                layer.method = rec.inner
        for layer, rec in zip(chunk, recorders):
            method = deferred[layer.prefix]
            w = layer.weight.detach()  # scales as create_weights keeps them: fp16 in a 16-bit model
            qw = gptq_int4(w, rec.hessian, method.group_size, scale_dtype=(
                torch.float32 if w.dtype == torch.float32 else torch.float16),
                act_order=ACT_ORDER)
            rec.hessian = None
            quantize_layer(layer, method, qw)
    logger.info("GPTQ: %d int4 layers calibrated on %d tokens of %s in %.1f s (%d pass%s)",
                len(layers), sum(map(len, windows)), quant.quantization_calibration,
                time.perf_counter() - start, len(chunks), "" if len(chunks) == 1 else "es")
    return len(layers)
