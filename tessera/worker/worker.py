"""Worker: one rank's device, process groups, model and KV cache; every executor wraps one
(in this process, in a process of its own, or a Ray actor later).

Flow: `Worker(config, rank, dist_init)` picks the device and dtype (worker/device.py; with
several ranks on a GPU host, GPU `rank`; a Ray actor passes `local_gpu`, the one GPU Ray
gave it), joins the process groups when there are several
ranks (distributed/parallel_state.py: TP groups per pipeline stage), and builds and loads
this rank's share of the model in its `runner` (worker/model_runner.py), which the
executor then drives: `num_kv_blocks()` (a memory profile) -> `init_kv_cache(n)` (the
cache, decode graphs, warm-up) -> `execute(SchedulerOutput)` (or `submit` then
`collect`). `info` (WorkerInfo) and `shutdown()` are the worker's own.
`returns_output`: TP rank 0 of the last pipeline stage, whose ModelRunnerOutput the engine
takes; the other ranks only join the collectives and pass hidden states on.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from tessera.config import EngineConfig
from tessera.distributed import parallel_state
from tessera.distributed.topology import check_gpus
from tessera.engine.protocol import WorkerInfo
from tessera.worker.device import cpu_threads, resolve_device, resolve_dtype
from tessera.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, dist_init: Optional[str] = None,
                 local_gpu: Optional[int] = None):
        par = config.parallel
        self.config, self.rank, self.world_size = config, rank, par.world_size
        self.device = resolve_device(config.model)
        self.dtype = resolve_dtype(config.model, self.device)
        cuda = self.device.type == "cuda"
        if not cuda:
            threads = cpu_threads(config.model, self.world_size * par.data_parallel_size)
            torch.set_num_threads(threads)
            logger.info("CPU engine: %d intra-op thread%s%s", threads, "s" * (threads > 1),
                        "" if config.model.cpu_threads else " (--cpu-threads to change)")
        if self.world_size > 1:
            if cuda and local_gpu is None:  # every rank on this host: GPU `rank` is its own
                check_gpus(par.tensor_parallel_size, par.pipeline_parallel_size, rank == 0)
            if cuda:
                torch.cuda.set_device(rank if local_gpu is None else local_gpu)
            parallel_state.init_parallel(rank, par.tensor_parallel_size,
                                         par.pipeline_parallel_size, dist_init,
                                         "nccl" if cuda else "gloo", par.collective_timeout_s,
                                         par.pp_layer_partition)
        parallel_state.set_expert_parallel(par.enable_expert_parallel)
        self.runner = ModelRunner(config, self.device, self.dtype)

    @property
    def returns_output(self) -> bool:
        return self.rank == self.world_size - self.config.parallel.tensor_parallel_size

    @property
    def info(self) -> WorkerInfo:
        return self.runner.info(self.world_size)

    def shutdown(self) -> None:
        """Lets go of the KV cache and the decode graphs (their memory returns once the
        runner is dropped); a worker process then exits, which ends its process group."""
        self.runner.kv_caches, self.runner.graphs = [], None
        if self.runner.weight_stream is not None:  # an offload file is removed
            self.runner.weight_stream.store.close()
