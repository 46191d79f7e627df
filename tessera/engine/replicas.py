"""Data-parallel replicas (`--data-parallel-size N`): N engine processes, each a whole copy
of the model on devices of its own, behind one endpoint (engine/mp_client.py starts them,
engine/router.py picks each request's).

Objects: `replica_env(config, i)`, the environment replica i's engine process starts with:
on a GPU host its slice of the GPUs (CUDA_VISIBLE_DEVICES: ranks i*TP*PP ... of the visible
ones; refused when the host has too few), nothing on the CPU or under Ray (which places the
workers itself; the replicas must then join one running cluster); `sum_stats(stats)`, the replicas' Stats as one (counters and blocks summed,
KV usage over all blocks).
"""
from __future__ import annotations

import os

from tessera.config import EngineConfig
from tessera.engine.ipc import Stats

_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else
    every GPU the driver lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    if not os.path.isdir(_NVIDIA_GPUS):
        return []
    return [str(i) for i in range(len(os.listdir(_NVIDIA_GPUS)))]


RAY_LOCAL_CLUSTER = "/tmp/ray/ray_current_cluster"  # what `ray start` leaves for ray.init()


def replica_env(config: EngineConfig, index: int) -> dict[str, str]:
    par = config.parallel
    if (par.data_parallel_size > 1 and par.distributed_executor_backend == "ray"
            and not (par.ray_address or os.environ.get("RAY_ADDRESS")
                     or os.path.exists(RAY_LOCAL_CLUSTER))):
        raise ValueError("data_parallel_size > 1 with the Ray backend needs a running Ray "
                         "cluster for the replicas to share (`ray start --head`, or "
                         "--ray-address / RAY_ADDRESS); each would start its own.")
    if (par.data_parallel_size == 1 or par.distributed_executor_backend == "ray"
            or config.model.device == "cpu"):
        return {}
    gpus = visible_gpus()
    if not gpus:
        return {}
    need = par.data_parallel_size * par.world_size
    if len(gpus) < need:
        raise ValueError(f"data_parallel_size {par.data_parallel_size} x {par.world_size} "
                         f"GPU(s) per replica needs {need} GPUs; this host has {len(gpus)}.")
    mine = gpus[index * par.world_size:(index + 1) * par.world_size]
    return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}


def sum_stats(stats: list[Stats]) -> Stats:
    if len(stats) == 1:
        return stats[0]
    total = Stats()
    for name in Stats.__struct_fields__:
        if name in ("kv_usage", "memory"):
            continue
        setattr(total, name, sum(getattr(s, name) for s in stats))
    memory: dict[str, int] = {}
    for s in stats:
        for kind, n in s.memory.items():
            memory[kind] = memory.get(kind, 0) + n
    total.memory = memory
    if total.num_blocks:
        total.kv_usage = (total.num_blocks - total.free_blocks) / total.num_blocks
    return total
