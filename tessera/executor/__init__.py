"""Executors: how the engine core runs its workers (executor/base.py: the interface).

`executor_class(config)` picks the implementation from
ParallelConfig.distributed_executor_backend: "uni" (the worker in this process:
UniprocExecutor), "mp" (a process per rank: MultiprocExecutor), "ray" (a Ray actor per rank, across a
cluster's nodes: RayExecutor), "auto" (uni for one rank,
else mp). Each is imported only when chosen (the uniprocess one brings torch with it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tessera.config import EngineConfig
    from tessera.executor.base import Executor


def executor_class(config: "EngineConfig") -> "type[Executor]":
    backend = config.parallel.distributed_executor_backend
    if backend == "auto":
        backend = "mp" if config.parallel.world_size > 1 else "uni"
    if backend == "uni":
        from tessera.executor.uniproc import UniprocExecutor
        return UniprocExecutor
    if backend == "ray":
        from tessera.executor.ray_executor import RayExecutor
        return RayExecutor
    from tessera.executor.multiproc import MultiprocExecutor
    return MultiprocExecutor
