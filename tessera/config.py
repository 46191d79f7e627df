"""EngineConfig: one composed, validated configuration for an engine.

Objects: ModelConfig (which checkpoint, dtype, device), CacheConfig (paged KV cache),
SchedulerConfig (token budget per step, sequences per step), ParallelConfig.
`EngineConfig.from_kwargs(**kw)` routes flat keyword arguments (the ones `LLM(...)` and
the CLI take) to the right part; each part validates itself in `__post_init__` and
raises ValueError naming the field.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@dataclasses.dataclass
class ModelConfig:
    model: Optional[str] = None  # HF folder, .gguf file, or a named shape with load_format=dummy
    tokenizer: Optional[str] = None  # defaults to the model's own
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto: cuda if available
    load_format: str = "auto"
    max_model_len: Optional[int] = None  # defaults to the model's context length
    seed: int = 0  # seeds dummy weights and unseeded sampling
    skip_tokenizer_init: bool = False
    enforce_eager: bool = False  # no CUDA graphs for decode steps

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype {self.dtype!r} is not supported; choose auto, float32, bfloat16 or float16."
            )
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format {self.load_format!r} is not one of {LOAD_FORMATS}.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r} is not supported; choose auto, cpu or cuda.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for, but CUDA is not available here.")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}.")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]


@dataclasses.dataclass
class CacheConfig:
    block_size: int = 16  # tokens per KV block
    gpu_memory_utilization: float = 0.90  # share of GPU memory Tessera may use in all
    cpu_kv_cache_gb: float = 1.0  # KV cache size on CPU
    num_blocks: Optional[int] = None  # overrides the computed number of blocks
    enable_prefix_caching: bool = True  # reuse KV blocks of identical prompt prefixes
    kv_cache_dtype: str = "auto"  # auto: the model's dtype; fp8: float8_e4m3fn (half of bf16)

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}.")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}."
            )
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}.")
        from tessera.quant.kv_cache import check_kv_cache_dtype
        check_kv_cache_dtype(self.kv_cache_dtype)


@dataclasses.dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 2048  # token budget of one step (prefill chunks + decodes)
    max_num_seqs: int = 256  # requests in one step
    max_waiting: int = 4096  # bounded queue: more waiting requests are refused
    # schedule step N+1 while step N runs on the device (its sampled tokens stay there
    # and feed N+1): the CPU side of a step leaves the GPU's critical path. Off with
    # pipeline parallelism, which keeps disjoint micro-batches in flight instead.
    async_scheduling: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclasses.dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1  # Megatron-style: heads and MLP columns split over ranks
    pipeline_parallel_size: int = 1
    collective_timeout_s: float = 60.0  # a collective or a step slower than this is an error
    enable_expert_parallel: bool = False  # MoE: whole experts per TP rank, not expert slices
    pp_layer_partition: str = ""  # layers per pipeline stage, e.g. "15,17" (default: balanced)

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.pp_layer_partition:
            parts = self.pp_layer_partition.split(",")
            if len(parts) != self.pipeline_parallel_size or not all(
                    p.strip().isdigit() and int(p) > 0 for p in parts):
                raise ValueError(f"pp_layer_partition {self.pp_layer_partition!r} must list "
                                 f"{self.pipeline_parallel_size} positive layer counts.")


@dataclasses.dataclass
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    parallel: ParallelConfig

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineConfig":
        parts = {}
        for name, part_cls in (("model", ModelConfig), ("cache", CacheConfig),
                               ("scheduler", SchedulerConfig), ("parallel", ParallelConfig)):
            fields = {f.name for f in dataclasses.fields(part_cls)}
            parts[name] = part_cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        if kwargs:
            raise TypeError(f"Unknown engine option(s): {', '.join(sorted(kwargs))}.")
        return cls(**parts)
