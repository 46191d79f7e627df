"""What the kernels' tuning depends on in the device, without Triton.

`nvidia_sm90_or_later(device)`: an NVIDIA (not ROCm) GPU of compute capability 9.0 or
later (Hopper on): where programmatic dependent launch (kernels/pdl.py) and the skinny
GEMM's tuning (quant/unquantized.py picks it there) apply.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def nvidia_sm90_or_later(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.version.hip is None
            and torch.cuda.get_device_capability(device)[0] >= 9)
