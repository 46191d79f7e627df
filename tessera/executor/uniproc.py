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
        r = self.runner
        return {"device": str(r.device), "dtype": str(r.dtype).removeprefix("torch."),
                "weight_gib": r.weight_bytes / 2**30, "load_seconds": r.load_seconds,
                "bytes_per_block": r.bytes_per_block,
                "kv_cache_dtype": str(r.kv_dtype).removeprefix("torch.")}
