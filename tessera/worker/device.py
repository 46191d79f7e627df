"""The torch device and dtype a worker runs on, from the config's names.

`resolve_device(ModelConfig)`: "auto" is CUDA when there is a GPU, else the CPU; asking
for CUDA where there is none is a ValueError naming it. `resolve_dtype(ModelConfig,
device)`: "auto" is bfloat16 on CUDA and float32 on the CPU. Several ranks of one host
each take their own GPU (`torch.cuda.set_device(rank)`, worker/worker.py).
"""
from __future__ import annotations

import torch

from tessera.config import ModelConfig

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} was asked for, but CUDA is not available here.")
    return torch.device(cfg.device)


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[cfg.dtype]
