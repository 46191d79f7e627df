"""SiluAndMul: the gated MLP activation, silu(gate) * up over a merged [gate | up] input.
On CUDA one Triton kernel (kernels/silu_and_mul.py); elsewhere, PyTorch ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, 2 * d] -> [num_tokens, d]."""
        if x.is_cuda:
            from tessera.kernels.silu_and_mul import silu_and_mul
            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
