"""RMSNorm, with an optional fused residual add (returns the new residual too), through
the ops the model was built with (layers/ops.py: one Triton kernel, or PyTorch)."""
from __future__ import annotations

import torch
from torch import nn

from tessera.layers.context import current


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.ops = current().ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x, residual: [num_tokens, hidden]. With a residual: (norm(x + r), x + r)."""
        return self.ops.rms_norm(x, self.weight, self.eps, residual)
