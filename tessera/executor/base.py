"""Executor: how the engine core runs its workers (no torch here).

Objects: Executor, what the core drives: `num_kv_blocks()`, `init_kv_cache(n)`, `submit`
then `collect` a step, or `execute`; `info` (WorkerInfo), `shutdown()`. Implementations
(executor/uniproc.py, executor/multiproc.py; Ray's later) each wrap worker/worker.py's
Worker; `executor_class(config)` (executor/__init__.py) picks one. A layout the model
cannot take is refused before any worker starts.
"""
from __future__ import annotations

import abc

from tessera.config import EngineConfig
from tessera.distributed.topology import check_layout
from tessera.engine.protocol import ModelRunnerOutput, SchedulerOutput, WorkerInfo


class Executor(abc.ABC):
    def __init__(self, config: EngineConfig):
        self.config = config
        a, par = config.info.arch, config.parallel
        check_layout(a.num_heads, a.num_kv_heads, a.intermediate_size, a.num_layers,
                     par.tensor_parallel_size, par.pipeline_parallel_size)

    @abc.abstractmethod
    def num_kv_blocks(self) -> int:
        """The number of KV blocks every rank can hold (the smallest estimate)."""

    @abc.abstractmethod
    def init_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        """The device cache of num_blocks, and a KV host tier of num_host_blocks."""

    @abc.abstractmethod
    def submit(self, sched: SchedulerOutput) -> None:
        """Starts a step; steps run in the order submitted."""

    @abc.abstractmethod
    def collect(self) -> ModelRunnerOutput:
        """The oldest submitted step's output (waits for it)."""

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self.submit(sched)
        return self.collect()

    @property
    @abc.abstractmethod
    def info(self) -> WorkerInfo: ...

    @abc.abstractmethod
    def shutdown(self) -> None: ...

