"""Weight bytes by precision: what the start-up log and /metrics report.

`weight_bytes_by_precision(model)` -> {"int8": bytes, "bfloat16": bytes, ...}: a linear
layer's and the LM head's bytes (data, scales, offsets and bias) count under its method's
format (quant/base.py `precision`), quantized MoE experts' under theirs (`quant_kind`),
every other parameter (embeddings, norms) under its dtype; a tensor shared by two
modules (tied embeddings) counts once.
(engine/protocol.py's WorkerInfo carries them and describes them for the log.)
"""
from __future__ import annotations

from torch import nn


def weight_bytes_by_precision(model: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    seen: set[int] = set()
    for module in model.modules():
        method = getattr(module, "method", None)
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if method is not None:
                name = method.precision(module)
            else:  # MoE experts name their format; anything else its dtype
                name = getattr(module, "quant_kind", None) or str(p.dtype).removeprefix("torch.")
            out[name] = out.get(name, 0) + p.numel() * p.element_size()
    return out

