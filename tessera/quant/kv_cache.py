"""KV-cache quantization: the dtypes the paged cache may hold, and the cast into them.

Objects: KV_CACHE_DTYPES (name -> dtype; "auto" keeps the model's dtype, "fp8" /
"fp8_e4m3" store float8_e4m3fn, one byte a value: half of bf16, a quarter of fp32);
`check_kv_cache_dtype(name)`; `resolve_kv_cache_dtype(name, model_dtype, device)`;
FP8_MAX; `to_cache_dtype(x, dtype)` (the saturating cast the Triton write kernel does
too); `store_rows(rows, slots, x)` (index_copy_ into cache rows, through a byte view for
fp8, which PyTorch's CPU kernels lack). The references widen cached values back to the query's dtype (exact: every e4m3
value is a bf16/fp16 value); the Triton kernels do too, except under bf16 queries, where
they compute in fp16 (kernels/attention_tiles.py).
Scales: none (1.0), as vLLM without calibrated scales: the Llama family's keys and values
sit well inside e4m3's +-448, and anything beyond saturates instead of overflowing.
"""
from __future__ import annotations

from typing import Optional

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
KV_CACHE_DTYPES: dict[str, Optional[torch.dtype]] = {
    "auto": None, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}


def check_kv_cache_dtype(name: str) -> None:
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype {name!r} is not supported; choose one of "
                         f"{', '.join(KV_CACHE_DTYPES)}.")


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype,
                           device: Optional[torch.device] = None) -> torch.dtype:
    """The cache's dtype; with a device, also checks that the device can hold it."""
    check_kv_cache_dtype(name)
    dtype = KV_CACHE_DTYPES[name] or model_dtype
    if (dtype == torch.float8_e4m3fn and device is not None and device.type == "cuda"
            and torch.cuda.get_device_capability(device) < (8, 9)):
        raise ValueError("an fp8 KV cache needs an NVIDIA GPU of compute capability 8.9 or "
                         "later (Ada, Hopper); use kv_cache_dtype auto.")
    return dtype


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == x.dtype:
        return x
    if dtype == torch.float8_e4m3fn:
        x = x.clamp(-FP8_MAX, FP8_MAX)
    return x.to(dtype)


def store_rows(rows: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """rows[slots] = x in the cache's dtype. rows: [S, ...]; slots: [T]; x: [T, ...]."""
    x = to_cache_dtype(x, rows.dtype)
    if rows.dtype == torch.float8_e4m3fn:
        rows, x = rows.view(torch.uint8), x.view(torch.uint8)
    rows.index_copy_(0, slots, x)
