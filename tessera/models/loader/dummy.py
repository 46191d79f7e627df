"""Random weights of a model's shape, for benchmarks (speed depends on shapes, not values).

`fill_random(model, seed)`: matrices from N(0, 0.02), norm weights 1, biases 0. A linear
layer's method (and a MoE layer) fills its own (quant/base.py `fill_random`: a quantized method makes the
random matrix a slice at a time and quantizes it, so 16-bit weights are never held whole).
"""
from __future__ import annotations

import torch
from torch import nn


def fill_random(model: nn.Module, seed: int) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        method = getattr(module, "method", None)
        if method is not None:
            method.fill_random(module, gen)
        elif hasattr(module, "fill_random"):  # MoE experts (quantized or not)
            module.fill_random(gen)
        else:
            continue
        done.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if id(p) in done:
            continue
        if p.dim() == 1:
            p.data.fill_(1.0 if "norm" in name else 0.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
