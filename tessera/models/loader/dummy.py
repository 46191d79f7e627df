"""Random weights of a model's shape, for benchmarks (speed depends on shapes, not values).

`fill_random(model, seed, device)`: matrices from N(0, 0.02), norm weights 1, biases 0. A
linear layer's method (and a MoE layer) fills its own (quant/base.py `fill_random`: a
quantized method makes the random matrix a slice at a time and quantizes it, so 16-bit
weights are never held whole). Layers built in CPU memory (weight offload) are filled on
the device a module at a time and copied back: the same values, drawn as fast.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def fill_random(model: nn.Module, seed: int, device: torch.device) -> None:
    """device: the model's; a module built in CPU memory (an offloaded layer) is filled
    there too, a tensor at a time, so its values are those it would have had there."""
    gen = torch.Generator(device=device).manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        method = getattr(module, "method", None)
        if method is None and not hasattr(module, "fill_random"):
            continue
        with _on(module, device):
            if method is not None:
                method.fill_random(module, gen)
            else:  # MoE experts (quantized or not)
                module.fill_random(gen)
        done.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if id(p) in done:
            continue
        if p.dim() == 1:
            p.data.fill_(1.0 if "norm" in name else 0.0)
        else:
            with _on(p, device, own=True):
                p.data.normal_(0.0, 0.02, generator=gen)


@contextlib.contextmanager
def _on(module, device: torch.device, own: bool = False):
    """The module's own parameters (or the parameter itself) on `device` while filled."""
    params = [module] if own else list(module.parameters(recurse=False))
    away = [p for p in params if p.device.type != device.type]
    homes = [p.data for p in away]
    for p in away:
        p.data = torch.empty_like(p.data, device=device)
    try:
        yield
    finally:
        for p, home in zip(away, homes):
            home.copy_(p.data)
            p.data = home
