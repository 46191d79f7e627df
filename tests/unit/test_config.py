"""EngineConfig: validated parts, the kernel section, and the JSON that carries the whole
config (the resolved model metadata included) to the engine process and the workers."""
from __future__ import annotations

import dataclasses
import os

import pytest

from tessera.config import EngineConfig, KernelConfig
from tessera.executor import executor_class
from tessera.frontend.model_info import resolve_config


def test_json_round_trip_keeps_every_part_and_the_model_metadata():
    config = EngineConfig.from_kwargs(model="smollm2-135m", load_format="dummy",
                                      max_model_len=512, skinny_gemm="off", pdl=False,
                                      tensor_parallel_size=2, kv_cache_dtype="fp8")
    resolved, tokenizer = resolve_config(config)
    assert tokenizer is None and resolved.max_model_len == 512
    back = EngineConfig.from_json(resolved.to_json())
    assert back == resolved
    assert back.info.arch.eos_token_ids == (2,) and isinstance(back.info.arch.eos_token_ids,
                                                                tuple)
    assert back.kernel == KernelConfig(skinny_gemm="off", pdl=False)


def test_metadata_is_resolved_once():
    """A resolved config is not read again: its ModelInfo is what every process gets."""
    config, _ = resolve_config(EngineConfig.from_kwargs(model="smollm2-135m",
                                                        load_format="dummy"))
    forged = dataclasses.replace(config, model_info=dataclasses.replace(config.info,
                                                                        max_model_len=77))
    again, _ = resolve_config(forged)
    assert again.max_model_len == 77
    with pytest.raises(RuntimeError, match="not resolved"):
        EngineConfig.from_kwargs(model="x").max_model_len  # noqa: B018


def test_kernel_switches_are_validated_by_name():
    with pytest.raises(ValueError, match="kernel_backend 'cuda'"):
        KernelConfig(kernel_backend="cuda")
    with pytest.raises(ValueError, match="fused_moe mode"):
        KernelConfig(fused_moe="sometimes")
    with pytest.raises(TypeError, match="Unknown engine option"):
        EngineConfig.from_kwargs(skinny="off")


def test_the_executor_follows_the_config():
    def chosen(**kw):
        return executor_class(EngineConfig.from_kwargs(**kw)).__name__
    assert chosen() == "UniprocExecutor"
    assert chosen(tensor_parallel_size=2) == "MultiprocExecutor"
    assert chosen(distributed_executor_backend="mp") == "MultiprocExecutor"
    assert chosen(distributed_executor_backend="ray") == "RayExecutor"
    with pytest.raises(ValueError, match="distributed_executor_backend 'slurm'"):
        EngineConfig.from_kwargs(distributed_executor_backend="slurm")


def test_cpu_threads_default_to_the_physical_cores_shared_by_the_ranks():
    from tessera.config import ModelConfig
    from tessera.worker.device import cpu_threads, physical_cores
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert cpu_threads(ModelConfig()) == cores
    assert cpu_threads(ModelConfig(), ranks=cores * 4) == 1  # at least one each
    assert cpu_threads(ModelConfig(cpu_threads=3), ranks=2) == 3
    with pytest.raises(ValueError, match="cpu_threads must be >= 1"):
        ModelConfig(cpu_threads=0)
