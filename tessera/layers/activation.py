"""SiluAndMul: the gated MLP activation, silu(gate) * up over a merged [gate | up] input,
through the ops the model was built with (layers/ops.py: a Triton kernel or PyTorch)."""
from __future__ import annotations

import torch
from torch import nn

from tessera.layers.context import current


class SiluAndMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.ops = current().ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, 2 * d] -> [num_tokens, d]."""
        return self.ops.silu_and_mul(x)
