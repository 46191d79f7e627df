"""Tensor- and pipeline-parallel ranks seen by the layers and the model runner.

Layout: global rank = pp_rank * tp_size + tp_rank; the ranks of one pipeline stage form
a TP group. Layers ask `tp_rank()` / `tp_size()` when they are built and shard their
weights while loading; the model asks `pp_stage()` which layers it holds, and the runner
sends hidden states to the next stage (`send_to_next` / `recv_from_prev`). A worker of
the multi-process executor calls `init_parallel` first; a single process is rank 0 of 1.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: object = None  # a torch.distributed ProcessGroup when size > 1


@dataclasses.dataclass(frozen=True)
class PPStage:
    rank: int = 0  # stage index
    size: int = 1
    tp_size: int = 1
    partition: str = ""  # layers per stage, "" for balanced

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.size - 1


_TP = TPGroup()
_PP = PPStage()
_EXPERT_PARALLEL = False  # experts split whole over the TP ranks instead of sliced


def set_expert_parallel(enabled: bool) -> None:
    global _EXPERT_PARALLEL
    _EXPERT_PARALLEL = enabled


def expert_parallel() -> bool:
    return _EXPERT_PARALLEL


def set_tp_group(group: TPGroup) -> None:
    global _TP
    _TP = group


def init_parallel(rank: int, tp: int, pp: int, init_method: str, backend: str,
                  timeout_s: float, partition: str = "") -> None:
    """Joins the process group of all ranks (gloo on CPU, NCCL on GPUs) and builds one TP
    group per stage; collectives that wait longer than `timeout_s` raise, never hang."""
    import datetime

    import torch.distributed as dist
    global _PP
    dist.init_process_group(backend, init_method=init_method, world_size=tp * pp, rank=rank,
                            timeout=datetime.timedelta(seconds=timeout_s))
    stage = rank // tp
    if pp == 1:
        group = dist.group.WORLD
    else:  # every rank creates every group, in the same order
        groups = [dist.new_group(list(range(s * tp, (s + 1) * tp))) for s in range(pp)]
        group = groups[stage]
    set_tp_group(TPGroup(rank % tp, tp, group))
    _PP = PPStage(stage, pp, tp, partition)


def pp_stage() -> PPStage:
    return _PP


def send_to_next(tensors: list[torch.Tensor]) -> None:
    """Sends this stage's output to the same TP rank of the next stage."""
    peer = (_PP.rank + 1) * _PP.tp_size + _TP.rank
    for t in tensors:
        torch.distributed.send(t.contiguous(), dst=peer)


def recv_from_prev(shapes: list[tuple[int, ...]], dtype: torch.dtype,
                   device: torch.device) -> list[torch.Tensor]:
    peer = (_PP.rank - 1) * _PP.tp_size + _TP.rank
    out = []
    for shape in shapes:
        t = torch.empty(shape, dtype=dtype, device=device)
        torch.distributed.recv(t, src=peer)
        out.append(t)
    return out


def layer_range(num_layers: int) -> tuple[int, int]:
    """This stage's layers [start, end): balanced by count (earlier stages take the
    remainder), or as the partition says ("16,16" layers per stage)."""
    if _PP.partition:
        sizes = [int(x) for x in _PP.partition.split(",")]
        if sum(sizes) != num_layers:
            raise ValueError(f"pp_layer_partition {_PP.partition!r} covers {sum(sizes)} "
                             f"layers; the model has {num_layers}.")
    else:
        base, extra = divmod(num_layers, _PP.size)
        sizes = [base + (1 if s < extra else 0) for s in range(_PP.size)]
    start = sum(sizes[:_PP.rank])
    return start, start + sizes[_PP.rank]


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
