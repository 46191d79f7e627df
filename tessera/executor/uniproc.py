"""UniprocExecutor: one Worker in this very process (one rank); steps go straight to its
model runner."""
from __future__ import annotations

from tessera.config import EngineConfig
from tessera.engine.protocol import ModelRunnerOutput, SchedulerOutput, WorkerInfo
from tessera.executor.base import Executor
from tessera.worker.worker import Worker


class UniprocExecutor(Executor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.worker = Worker(config)
        self.runner = self.worker.runner

    def num_kv_blocks(self) -> int:
        return self.runner.num_kv_blocks()

    def init_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        self.runner.init_kv_cache(num_blocks, num_host_blocks=num_host_blocks)

    def submit(self, sched: SchedulerOutput) -> None:
        self.runner.submit(sched)

    def collect(self) -> ModelRunnerOutput:
        return self.runner.collect()

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute(sched)

    @property
    def info(self) -> WorkerInfo:
        return self.worker.info

    def shutdown(self) -> None:
        self.worker.shutdown()
