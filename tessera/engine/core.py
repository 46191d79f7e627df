"""EngineCore: the step loop around the scheduler and an executor.

`step()`: schedule -> executor.execute -> scheduler.update_from_output -> outputs.
With pipeline stages, up to one batch per stage is in flight: `submit` several disjoint
batches, `collect` the oldest's output (the stages work on different batches at once).
With speculative decoding, a step that asks for drafts (`num_drafts`, spec_policy.py) is
collected before the next is scheduled (its output brings the drafts the next step
verifies); a step that asks for none (a large batch, drafts that do not pay) steps as
without speculation. With async scheduling (one device), two steps are in flight: step N+1 is scheduled and
submitted before step N's output is collected, so the scheduler, input preparation and
output handling of one step run while the device computes the other.
The core never touches tensors or CUDA: its executor (executor/base.py; picked by
`executor_class(config)`, or handed in) runs the workers, in this process or in
processes of their own, and only exchanges the plain messages of `protocol.py`.
On start it sizes the KV cache (the executor's estimate, or CacheConfig.num_blocks) and
logs what was set up.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Optional

from tessera.config import EngineConfig
from tessera.engine.cost import CostMeter
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from tessera.engine.request import Request, check_token_ids
from tessera.engine.scheduler import Scheduler
from tessera.engine.spec_policy import DraftPolicy
from tessera.executor import executor_class
from tessera.executor.base import Executor

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, config: EngineConfig, executor: Optional[Executor] = None):
        self.config = config
        self.executor = executor or executor_class(config)(config)
        max_model_len = config.max_model_len
        start = time.perf_counter()
        num_blocks = config.cache.num_blocks or self.executor.num_kv_blocks()
        # the KV host tier: kv_offload_gb of blocks, priced as the first rank's
        host_blocks = int(config.offload.kv_offload_gb * 2**30
                          // self.executor.info.bytes_per_block)
        if config.offload.kv_offload_gb and not host_blocks:
            raise ValueError(f"kv_offload_gb {config.offload.kv_offload_gb:g} holds no KV block "
                             f"({self.executor.info.bytes_per_block} bytes each).")
        self.executor.init_kv_cache(num_blocks, host_blocks)  # GPU: graphs, warm-up
        self._kv_seconds = time.perf_counter() - start
        self.kv = KVCacheManager(num_blocks, config.cache.block_size,
                                 config.cache.enable_prefix_caching, host_blocks)
        pp = config.parallel.pipeline_parallel_size
        spec = config.speculative
        overlap = pp == 1 and config.scheduler.async_scheduling
        lookahead = spec.num_speculative_tokens if spec.method == "draft" else 0
        self.scheduler = Scheduler(config.scheduler, self.kv, max_model_len,
                                   schedule_in_flight=overlap, num_lookahead=lookahead,
                                   draft_policy=DraftPolicy(spec) if spec.method else None)
        self.num_steps = 0
        self.pipeline_depth = 2 if overlap else pp
        self._in_flight: deque = deque()
        self.max_in_flight = 0
        # shape of the last step scheduled (the steps_scheduled-th), for stats and benchmarks
        self.last_step_tokens = self.last_step_requests = self.last_step_context = 0
        self.steps_scheduled = 0
        self.prompt_tokens_total = 0  # prompt tokens computed (recomputation included)
        self.generation_tokens_total = 0
        self.device_memory: dict[str, int] = {}  # the allocator's figures, as last reported
        self._block_bytes = self.executor.info.bytes_per_block  # a KV block on the first rank
        price = config.scheduler.price_per_hour  # engine/cost.py: each request's share
        self.cost = CostMeter(price, config.parallel.world_size) if price else None
        self._log_setup()

    def _log_setup(self) -> None:
        info, c = self.executor.info, self.config
        capacity, max_len = self.num_blocks * c.cache.block_size, c.max_model_len
        logger.info("model %s: %.2f GiB of weights (%s; %s activations, %s) loaded in %.1f s",
                    c.info.path, info.weight_gib, info.describe_weights(), info.dtype,
                    info.device, info.load_seconds)
        logger.info("KV cache (%s): %d blocks x %d tokens = %d tokens; maximum concurrency at "
                    "%d tokens per request: %.2fx; set up in %.1f s", info.kv_cache_dtype,
                    self.num_blocks, c.cache.block_size, capacity, max_len, capacity / max_len,
                    self._kv_seconds)
        if info.memory:
            logger.info("memory: %s", info.describe_memory())
        if capacity < max_len:
            logger.warning("the KV cache holds %d tokens, less than the context length %d: "
                           "requests that could outgrow it are refused", capacity, max_len)

    @property
    def num_blocks(self) -> int:
        return self.kv.pool.num_blocks

    def add_request(self, req: Request) -> None:
        """Queues req; ValueError for token ids outside the vocabulary (the core checks
        what reaches it itself), QueueFullError when the waiting queue is full."""
        check_token_ids(req.prompt_token_ids, req.params, self.config.info.arch.vocab_size)
        self.scheduler.add_request(req)

    def abort(self, request_ids: list[str]) -> None:
        self.scheduler.abort(request_ids)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._in_flight)

    def step(self) -> list[EngineCoreOutput]:
        if self.pipeline_depth > 1:
            return self._pipelined_step()
        sched = self.scheduler.schedule()
        if sched.is_empty and not sched.finished_request_ids:
            return []
        self._record_shape(sched)
        out = self.executor.execute(sched)
        return self._finish_step(sched, out)

    def _finish_step(self, sched: SchedulerOutput, out: ModelRunnerOutput):
        self.num_steps += 1
        if out.memory:
            self.device_memory = out.memory
        self.generation_tokens_total += sum(len(t) for t in out.sampled_token_ids.values())
        if self.cost is not None:
            self.cost.step_done(sched.num_scheduled_tokens, self.scheduler.requests)
        outputs = self.scheduler.update_from_output(sched, out)
        if self.cost is not None and not self.has_unfinished():
            self.cost.went_idle()
        return outputs

    def _pipelined_step(self) -> list[EngineCoreOutput]:
        """Keeps up to `pipeline_depth` batches in flight (pipeline stages: GPipe-style
        micro-batches over disjoint requests; async scheduling: consecutive steps of the
        same requests), then takes back the oldest."""
        while len(self._in_flight) < self.pipeline_depth:
            if self._in_flight and self._in_flight[-1][0].num_drafts:
                break  # its output brings the drafts the next step verifies
            sched = self.scheduler.schedule()
            if sched.is_empty:
                if sched.finished_request_ids:  # still tell the workers to forget them
                    self._in_flight.append((sched, None))
                    self.executor.submit(sched)
                break
            self._record_shape(sched)
            self.executor.submit(sched)
            self._in_flight.append((sched, None))
            self.max_in_flight = max(self.max_in_flight, len(self._in_flight))
        if not self._in_flight:
            return []
        sched, _ = self._in_flight.popleft()
        return self._finish_step(sched, self.executor.collect())

    def set_async_scheduling(self, enabled: bool) -> None:
        """Switches overlapped stepping on or off between requests (benchmarks compare
        both on one loaded model). Pipeline stages keep their own depth."""
        if self.has_unfinished():
            raise RuntimeError("async scheduling can only be switched while the engine is idle")
        if self.config.parallel.pipeline_parallel_size == 1:
            self.scheduler.schedule_in_flight = enabled
            self.pipeline_depth = 2 if enabled else 1

    def shutdown(self) -> None:
        self.executor.shutdown()

    def stats(self) -> dict[str, Any]:
        s = self.scheduler
        return {"running": len(s.running), "waiting": len(s.waiting), "kv_usage": self.kv.usage,
                "free_blocks": self.kv.num_free_blocks, "num_blocks": self.num_blocks,
                "cached_blocks": self.kv.pool.num_cached_free_blocks,
                "host_blocks": self.kv.host.num_blocks if self.kv.host else 0,
                "host_used_blocks": self.kv.host.num_used_blocks if self.kv.host else 0,
                "host_hit_tokens": self.kv.host_hit_tokens,
                "kv_bytes_to_host": self.kv.blocks_to_host * self._block_bytes,
                "kv_bytes_to_device": self.kv.blocks_to_device * self._block_bytes,
                "memory": self.device_memory,
                "preemptions": s.num_preemptions, "prompt_tokens": self.prompt_tokens_total,
                "generation_tokens": self.generation_tokens_total, "steps": self.num_steps,
                "prefix_hit_tokens": self.kv.hit_tokens,
                "prefix_query_tokens": self.kv.query_tokens,
                "spec_drafted": s.num_drafted, "spec_accepted": s.num_accepted,
                "spec_verify_steps": s.num_verify_steps,
                "cost_requests_usd": self.cost.requests_usd if self.cost else 0.0,
                "cost_idle_usd": self.cost.idle_usd if self.cost else 0.0}

    def _record_shape(self, sched: SchedulerOutput) -> None:
        reqs = self.scheduler.requests
        if self.cost is not None:
            self.cost.idle_until()  # an idle spell, if any, ends with this step
        self.steps_scheduled += 1
        self.last_step_tokens = sched.total_num_scheduled_tokens
        self.last_step_requests = len(sched.num_scheduled_tokens)
        # computed counts already include this step's tokens
        self.last_step_context = sum(reqs[rid].num_computed_tokens
                                     for rid in sched.num_scheduled_tokens)
        self.prompt_tokens_total += sum(
            min(n, max(0, reqs[rid].num_prompt_tokens - reqs[rid].num_computed_tokens + n))
            for rid, n in sched.num_scheduled_tokens.items())
