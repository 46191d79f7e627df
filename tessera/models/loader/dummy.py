"""Random weights of a model's shape, for benchmarks (speed depends on shapes, not values).

`fill_random(model, seed)`: matrices from N(0, 0.02), norm weights 1, biases 0.
"""
from __future__ import annotations

import torch
from torch import nn


def fill_random(model: nn.Module, seed: int) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.data.fill_(1.0 if "norm" in name else 0.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
