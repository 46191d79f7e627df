"""Tensor-parallel rank and size seen by the layers.

Layers ask `tp_rank()` / `tp_size()` when they are built and shard their weights while
loading. A worker of the multi-process executor calls `init_tensor_parallel` first;
a single process is rank 0 of 1.
`all_reduce` is the one collective row-parallel layers need.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: object = None  # a torch.distributed ProcessGroup when size > 1


_TP = TPGroup()
_EXPERT_PARALLEL = False  # experts split whole over the TP ranks instead of sliced


def set_expert_parallel(enabled: bool) -> None:
    global _EXPERT_PARALLEL
    _EXPERT_PARALLEL = enabled


def expert_parallel() -> bool:
    return _EXPERT_PARALLEL


def set_tp_group(group: TPGroup) -> None:
    global _TP
    _TP = group


def init_tensor_parallel(rank: int, size: int, init_method: str, backend: str,
                         timeout_s: float) -> None:
    """Joins the process group of all TP ranks (gloo on CPU, NCCL on GPUs); collectives
    that wait longer than `timeout_s` raise instead of hanging."""
    import datetime

    import torch.distributed as dist
    dist.init_process_group(backend, init_method=init_method, world_size=size, rank=rank,
                            timeout=datetime.timedelta(seconds=timeout_s))
    set_tp_group(TPGroup(rank, size, dist.group.WORLD))


def tp_rank() -> int:
    return _TP.rank


def tp_size() -> int:
    return _TP.size


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    if _TP.size == 1:
        return x
    torch.distributed.all_reduce(x, group=_TP.group)
    return x


def all_gather_last(x: torch.Tensor) -> torch.Tensor:
    """Concatenates every rank's x along the last dimension (rank order)."""
    if _TP.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_TP.size)]
    torch.distributed.all_gather(parts, x.contiguous(), group=_TP.group)
    return torch.cat(parts, dim=-1)
