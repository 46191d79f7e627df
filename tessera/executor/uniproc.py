"""UniprocExecutor: the model runner in this very process (TP = PP = 1)."""
from __future__ import annotations

from tessera.config import EngineConfig
from tessera.engine.protocol import ModelRunnerOutput, SchedulerOutput
from tessera.models.loader import ModelSource
from tessera.worker.model_runner import ModelRunner


class UniprocExecutor:
    def __init__(self, config: EngineConfig, source: ModelSource):
        self.runner = ModelRunner(config, source)

    def num_kv_blocks(self) -> int:
        return self.runner.num_kv_blocks()

    def init_kv_cache(self, num_blocks: int) -> None:
        self.runner.init_kv_cache(num_blocks)

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute(sched)

    def submit(self, sched: SchedulerOutput) -> None:
        self.runner.submit(sched)

    def collect(self) -> ModelRunnerOutput:
        return self.runner.collect()

    def describe(self) -> dict:
        return self.runner.describe()
