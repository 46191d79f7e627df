"""The torch device and dtype a worker runs on, from the config's names.

`resolve_device(ModelConfig)`: "auto" is CUDA when there is a GPU, else the CPU; asking
for CUDA where there is none is a ValueError naming it. `resolve_dtype(ModelConfig,
device)`: "auto" is bfloat16 on CUDA and float32 on the CPU. Several ranks of one host
each take their own GPU (`torch.cuda.set_device(rank)`, worker/worker.py).
`cpu_threads(ModelConfig, ranks)`: a CPU rank's intra-op threads: the config's, or the
physical cores given to the process (`physical_cores()`: the cores, not their hardware
threads, of the CPUs this process may run on) shared among the ranks; more threads than
cores only make the ranks contend.
"""
from __future__ import annotations

import os

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


def physical_cores() -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as a, open(f"{topology}/core_id") as b:
                cores.add((a.read().strip(), b.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count the CPU itself
    return len(cores) or os.cpu_count() or 1


def cpu_threads(cfg: ModelConfig, ranks: int = 1) -> int:
    return cfg.cpu_threads or max(1, physical_cores() // ranks)
