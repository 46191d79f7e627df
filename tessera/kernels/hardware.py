"""What the kernels' tuning depends on in the device, without Triton.

`nvidia_sm90_or_later(device)`: an NVIDIA (not ROCm) GPU of compute capability 9.0 or
later (Hopper on): where programmatic dependent launch (kernels/pdl.py) and the skinny
GEMM's tuning (quant/unquantized.py picks it there) apply. `multiprocessors(device)`:
(SMs, shared memory bytes of each), (0, 0) off CUDA: what a grid's waves are counted in
(kernels/skinny_config.py `fit_one_wave`). `program_shared_memory(device)`: the most
shared memory one program may take (Triton's driver: the opt-in maximum of a block), 0 off
CUDA: what kernels/fused_moe.py fits its tiles into.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def nvidia_sm90_or_later(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.version.hip is None
            and torch.cuda.get_device_capability(device)[0] >= 9)


@functools.lru_cache(maxsize=None)
def multiprocessors(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0, 0
    props = torch.cuda.get_device_properties(device)
    shared = getattr(props, "shared_memory_per_multiprocessor", 0) or 0
    if not shared:  # older torch: a block's most (opt-in) plus the 1 KB the driver keeps
        shared = program_shared_memory(device) + 1024
    return props.multi_processor_count, shared


@functools.lru_cache(maxsize=None)
def program_shared_memory(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    import triton  # the CUDA builds of torch bring it
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
