"""MultiprocExecutor: one worker process per rank (TP x PP of them), each a Worker.

Flow: start N `tessera.executor.worker_proc` processes (the config, model metadata
included, as JSON on the command line; a free port on ParallelConfig.distributed_init_host
for the process group), wait for each Hello, size the KV cache by the smallest estimate,
then per step send the same SchedulerOutput to every rank and wait for the output rank's
ModelRunnerOutput. Waiting is bounded: a worker that dies or
reports an error, or a step slower than `collective_timeout_s`, raises WorkerFailure
(the engine then stops) instead of hanging.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import zmq

from tessera.config import EngineConfig
from tessera.engine.protocol import ModelRunnerOutput, SchedulerOutput, WorkerInfo
from tessera.executor import messages as msg
from tessera.executor.base import Executor
from tessera.logs import level_name

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 1800.0


class WorkerFailure(RuntimeError):
    """A worker died, failed, or did not answer in time."""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MultiprocExecutor(Executor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.world = config.parallel.world_size
        self.timeout = config.parallel.collective_timeout_s
        self._tmp = tempfile.mkdtemp(prefix="tessera-workers-")
        self._ctx = zmq.Context()
        self._results = self._ctx.socket(zmq.PULL)
        out_addr = f"ipc://{self._tmp}/results"
        self._results.bind(out_addr)
        self._inboxes, self._procs = [], []
        host = config.parallel.distributed_init_host
        dist_init = f"tcp://{host}:{_free_port(host)}"
        config_json = config.to_json()
        for rank in range(self.world):
            inbox = self._ctx.socket(zmq.PUSH)
            inbox.setsockopt(zmq.LINGER, 0)
            addr = f"ipc://{self._tmp}/rank{rank}"
            inbox.bind(addr)
            self._inboxes.append(inbox)
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "tessera.executor.worker_proc", "--config",
                 config_json, "--dist-init", dist_init, "--input", addr, "--output", out_addr,
                 "--rank", str(rank), "--parent-pid", str(os.getpid()),
                 "--log-level", level_name()], stdin=subprocess.DEVNULL))
        hellos = [self._wait(msg.Hello, STARTUP_TIMEOUT_S) for _ in range(self.world)]
        self._blocks = min(h.num_blocks for h in hellos)
        self.worker_infos = [h.info for h in sorted(hellos, key=lambda h: h.rank)]
        by_precision: dict[str, int] = {}
        for h in hellos:
            for name, n in h.info.weight_bytes.items():
                by_precision[name] = by_precision.get(name, 0) + n // self.world
        self._info = dataclasses.replace(  # weights: the mean rank's share
            self.worker_infos[0], weight_gib=sum(h.info.weight_gib for h in hellos) / self.world,
            weight_bytes=by_precision)

    def num_kv_blocks(self) -> int:
        return self._blocks

    def init_kv_cache(self, num_blocks: int, num_host_blocks: int = 0) -> None:
        self._broadcast(msg.InitCache(num_blocks, num_host_blocks))
        acks = [self._wait(msg.Ack, STARTUP_TIMEOUT_S) for _ in range(self.world)]
        self._info.memory = min(acks, key=lambda a: a.rank).memory  # rank 0's, set up

    def submit(self, sched: SchedulerOutput) -> None:
        """Starts a step; workers run steps in order, so stages overlap on several."""
        self._broadcast(msg.Step(sched))

    def collect(self) -> ModelRunnerOutput:
        """The output of the oldest submitted step (the last stage answers in order)."""
        return self._wait(msg.StepDone, self.timeout).output

    @property
    def info(self) -> WorkerInfo:
        return self._info

    def _broadcast(self, m) -> None:
        frame = msg.encoder.encode(m)
        for rank, inbox in enumerate(self._inboxes):
            self._check_alive()
            try:
                inbox.send(frame, flags=zmq.NOBLOCK)
            except zmq.Again:
                raise WorkerFailure(f"worker {rank} is not taking messages") from None

    def _wait(self, kind, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._results.poll(100):
                m = msg.from_worker.decode(self._results.recv())
                if isinstance(m, msg.WorkerError):
                    self.shutdown()
                    raise WorkerFailure(f"worker {m.rank} failed: {m.message}")
                if isinstance(m, kind):
                    return m
            self._check_alive()
        self.shutdown()
        raise WorkerFailure(f"no answer from the workers within {timeout_s:.0f} s")

    def _check_alive(self) -> None:
        for rank, proc in enumerate(self._procs):
            if proc.poll() is not None:
                code = proc.returncode
                self.shutdown()
                raise WorkerFailure(f"worker {rank} exited with code {code}")

    def shutdown(self) -> None:
        for inbox in self._inboxes:
            try:
                inbox.send(msg.encoder.encode(msg.Shutdown()), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __del__(self):
        for proc in getattr(self, "_procs", []):
            if proc.poll() is None:
                proc.kill()
