"""MessagingExecutor: the executor half of the worker protocol (executor/messages.py) over
ZMQ, whatever starts the workers (processes: executor/multiproc.py; Ray actors:
executor/ray_executor.py).

Flow: a subclass binds the results socket and one inbox per rank (`_bind`), starts its
workers pointed at them, then calls `_greet()`: wait for each rank's Hello, size the KV
cache by the smallest estimate, sum the weights. Per step the same SchedulerOutput goes to
every rank; the output rank's ModelRunnerOutput comes back in step order. Waiting is
bounded: a worker that is gone (`_check_alive`, the subclass's), reports an error, or a step
slower than `collective_timeout_s` raises WorkerFailure (the engine then stops) instead of
hanging. Only msgpack frames cross these sockets, never pickle. Sockets on a network (Ray's
TCP ones) are CURVE-encrypted: a peer must know the executor's public key, which it is
handed when started, to connect, read steps or send results (`connect_secured`).
"""
from __future__ import annotations

import abc
import dataclasses
import time
from typing import Optional

import zmq

from tessera.config import EngineConfig
from tessera.engine.protocol import ModelRunnerOutput, SchedulerOutput, WorkerInfo
from tessera.executor import messages as msg
from tessera.executor.base import Executor

STARTUP_TIMEOUT_S = 1800.0


def _secured(sock, keys):
    """sock as a CURVE server with this (public, secret) key pair; as it is if None."""
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_server = True
    return sock


def connect_secured(sock, address: str, server_key) -> None:
    """Connects sock to a MessagingExecutor's socket at address: encrypted (CURVE, with a
    key pair of its own) when the executor gave its public key server_key."""
    if server_key:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_key.encode()
    sock.connect(address)


class WorkerFailure(RuntimeError):
    """A worker died, failed, or did not answer in time."""


class MessagingExecutor(Executor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.world = config.parallel.world_size
        self.timeout = config.parallel.collective_timeout_s
        self._ctx: Optional[zmq.Context] = None  # made by `_bind` (a failed start before it
        # leaves no context and no I/O thread behind); terminated by `shutdown`
        self._inboxes: list = []
        self._closed = False
        self._last_check = 0.0  # a subclass may ask `_check_alive` only now and then

    def _bind(self, results_addr: str, inbox_addr, encrypt: bool = False
              ) -> tuple[str, list[str]]:
        """Binds the results socket and one inbox per rank (`inbox_addr(rank)`); returns the
        addresses workers connect to (a TCP port 0 becomes the one bound). encrypt: the
        sockets are CURVE servers (`server_key` is their public key, which a worker must
        know to connect at all: sockets on a network, not a private folder)."""
        self._ctx = zmq.Context()
        keys = zmq.curve_keypair() if encrypt else None
        self.server_key = keys[0].decode() if keys else None
        self._results = _secured(self._ctx.socket(zmq.PULL), keys)
        self._results.bind(results_addr)
        inboxes = []
        for rank in range(self.world):
            inbox = _secured(self._ctx.socket(zmq.PUSH), keys)
            inbox.setsockopt(zmq.LINGER, 0)
            inbox.bind(inbox_addr(rank))
            self._inboxes.append(inbox)
            inboxes.append(inbox.getsockopt(zmq.LAST_ENDPOINT).decode())
        return self._results.getsockopt(zmq.LAST_ENDPOINT).decode(), inboxes

    def _greet(self) -> None:
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
            self._alive_or_raise()
            try:
                inbox.send(frame, flags=zmq.NOBLOCK)
            except zmq.Again:  # its peer is gone (or far behind)
                self._last_check = 0.0
                self._fail(self._check_alive() or f"worker {rank} is not taking messages")

    def _wait(self, kind, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._results.poll(100):
                m = msg.from_worker.decode(self._results.recv())
                if isinstance(m, msg.WorkerError):
                    self._fail(f"worker {m.rank} failed: {m.message}")
                if isinstance(m, kind):
                    return m
            self._alive_or_raise()
        self._fail(f"no answer from the workers within {timeout_s:.0f} s")

    def _alive_or_raise(self) -> None:
        gone = self._check_alive()
        if gone:
            self._fail(gone)

    def _fail(self, message: str):
        """Every failure ends here: the workers are stopped, then WorkerFailure."""
        self.shutdown()
        raise WorkerFailure(message)

    @abc.abstractmethod
    def _check_alive(self) -> str:
        """"" while every worker lives, else what happened to the first one gone."""

    @abc.abstractmethod
    def _stop_workers(self) -> None:
        """After Shutdown was sent: wait a little for the workers, then kill the rest."""

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for inbox in self._inboxes:
            try:
                inbox.send(msg.encoder.encode(msg.Shutdown()), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._stop_workers()
        for sock in [*self._inboxes, getattr(self, "_results", None)]:
            if sock is not None:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
