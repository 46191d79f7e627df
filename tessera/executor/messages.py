"""Messages between the multi-process executor and its workers (msgspec, never pickle).

Executor -> worker: InitCache, Step (a SchedulerOutput), Shutdown. Worker -> executor:
Hello (after loading: its KV-block estimate and its WorkerInfo), Ack (after InitCache,
with the memory accounting: worker/memory.py), StepDone (the
output rank's ModelRunnerOutput), WorkerError (any exception, with the rank; the worker
then exits).
"""
from __future__ import annotations

from typing import Union

import msgspec

from tessera.engine.protocol import ModelRunnerOutput, SchedulerOutput, WorkerInfo


class InitCache(msgspec.Struct, tag=True):
    num_blocks: int
    num_host_blocks: int = 0  # the KV host tier's


class Step(msgspec.Struct, tag=True):
    sched: SchedulerOutput


class Shutdown(msgspec.Struct, tag=True):
    pass


class Hello(msgspec.Struct, tag=True):
    rank: int
    num_blocks: int
    info: WorkerInfo


class Ack(msgspec.Struct, tag=True):
    rank: int
    memory: dict[str, int] = {}  # after InitCache: the worker's memory accounting


class StepDone(msgspec.Struct, tag=True):
    output: ModelRunnerOutput


class WorkerError(msgspec.Struct, tag=True):
    rank: int
    message: str


ToWorker = Union[InitCache, Step, Shutdown]
FromWorker = Union[Hello, Ack, StepDone, WorkerError]
encoder = msgspec.msgpack.Encoder()
to_worker = msgspec.msgpack.Decoder(ToWorker)
from_worker = msgspec.msgpack.Decoder(FromWorker)
