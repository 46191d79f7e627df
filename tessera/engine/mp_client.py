"""MPClient: the engine core in a process of its own, over ZMQ (the API server's client).

It starts `python -m tessera.engine.core_proc` (engine/core_handle.py's CoreProcess: the
config, its resolved model metadata included, as JSON on the command line; a PUSH socket
for ClientMessages, a PULL socket for EngineMessages) and waits for Ready; with
`--data-parallel-size N`, N of them at once, each a replica with its own devices
(engine/replicas.py), and a Router (engine/router.py) picks each request's replica by
load and prefix affinity; their stats are summed. `generate()` is an async iterator of
RequestOutputs for one request: the shared EngineClient logic (engine/client.py) validates
and fans it out, AddRequest goes per child (n > 1), and the reader task routes each step's
outputs, after the output processor (detokenize, stop strings), to the request's mailbox,
which keeps only the newest (cumulative) output: a client that reads slowly or not at all
holds one (engine/latest.py).
Leaving the iterator early (client disconnect, error) aborts the request in the engine,
which frees its KV blocks at once. If the engine process dies, every waiting request gets
EngineDeadError and `on_dead` fires (the server then exits).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from typing import AsyncIterator, Callable, Optional

import zmq

from tessera.config import EngineConfig
from tessera.engine import ipc
from tessera.engine.client import Children, EngineClient
from tessera.engine.core_handle import CoreProcess
from tessera.engine.latest import Latest
from tessera.engine.replicas import replica_env, sum_stats
from tessera.engine.router import Router
from tessera.frontend.input import PreparedPrompt
from tessera.outputs import RequestOutput
from tessera.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine process is gone; the server cannot serve."""


class RequestRejected(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class MPClient(EngineClient):
    def __init__(self, config: EngineConfig, on_dead: Optional[Callable[[str], None]] = None,
                 placements: Optional[list[tuple[EngineConfig, dict[str, str]]]] = None):
        """placements: the replicas' own configs and environments (a deployment file's
        model on several device groups: server/deployment.py); default: config's
        data_parallel_size replicas, on the GPUs in order."""
        super().__init__(config)
        self.on_dead = on_dead
        self.ready: Optional[ipc.Ready] = None
        self.stats = ipc.Stats()  # all replicas together
        self.dead: Optional[str] = None
        self.observers: list = []  # objects with on_output(parent_id, RequestOutput, now) etc.
        self._queues: dict[str, Latest] = {}  # request id -> its newest output
        self._child_parent: dict[str, str] = {}  # child request id -> its request
        self._children: dict[str, list[str]] = {}  # request id -> child ids sent
        self._replica_of: dict[str, int] = {}  # request id -> the replica serving it
        self._pending_aborts: list[str] = []  # child ids to abort, not yet sent
        self._ids = itertools.count()
        if placements is None:
            placements = [(self.config, replica_env(self.config, i))
                          for i in range(self.config.parallel.data_parallel_size)]
        else:  # the model's metadata, resolved once, goes to every replica
            placements = [(dataclasses.replace(c, model_info=self.config.model_info,
                                               draft_info=self.config.draft_info), env)
                          for c, env in placements]
        replicas = len(placements)
        self.cores = [CoreProcess(c, i, env) for i, (c, env) in enumerate(placements)]
        self.router = Router(replicas, self.config.cache.block_size,
                             self.config.scheduler.max_num_seqs or 256)
        self._tasks: list[asyncio.Task] = []

    # -- life cycle ----------------------------------------------------------------------
    async def start(self, ready_timeout_s: float = 1800.0, one_at_a_time: bool = False
                    ) -> ipc.Ready:
        """Starts the engine process (one per data-parallel replica, at once; one_at_a_time
        when engines share GPUs, so each sizes its KV cache by what the others left) and
        waits for them; on any failure or interruption (Ctrl-C included) every engine is
        stopped and its IPC folder removed before the error goes on."""
        try:
            if one_at_a_time:
                readies = [await c.launch(ready_timeout_s) for c in self.cores]
            else:
                readies = await asyncio.gather(*(c.launch(ready_timeout_s)
                                                 for c in self.cores))
        except BaseException:
            await self.shutdown()
            raise
        self.ready = readies[0]
        self.stats = sum_stats([c.stats for c in self.cores])
        self._tasks = [asyncio.create_task(self._read_loop(c)) for c in self.cores]
        self._tasks.append(asyncio.create_task(self._watch()))
        return self.ready

    async def shutdown(self) -> None:
        """Stops the engines (Shutdown, then SIGKILL after 10 s; at once if one is not
        ready yet), closes the sockets and removes the IPC folders. Safe to call more than
        once."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(c.stop() for c in self.cores))

    # -- requests ------------------------------------------------------------------------
    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}-{os.urandom(4).hex()}"

    async def generate(self, request_id: str, prompt: PreparedPrompt,
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if self.dead:
            raise EngineDeadError(self.dead)
        queue = Latest()
        self._queues[request_id] = queue
        for obs in self.observers:
            obs.on_arrival(request_id, len(prompt.token_ids), time.monotonic())
        finished = False
        try:
            self._start(request_id, prompt, params)
            while True:
                item = await queue.get()  # raises the request's error, if it got one
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)
            self._forget(request_id)

    def _send_children(self, request_id: str, prompt: PreparedPrompt,
                       children: Children) -> None:
        """All or none: if one child cannot be sent (a full send queue: RequestRejected
        503), those already sent are aborted."""
        sent = self._children.setdefault(request_id, [])
        replica = self.router.pick(prompt.token_ids) if len(self.cores) > 1 else 0
        self._replica_of[request_id] = replica
        try:
            for cid, child_params in children:
                self._send(ipc.AddRequest(cid, prompt.token_ids, child_params), replica)
                self.router.sent(replica)
                self._child_parent[cid] = request_id  # (replies are read after this)
                sent.append(cid)
        except RequestRejected:
            if sent:
                self._abort_children(list(sent))
            raise

    def _abort_children(self, child_ids: list[str]) -> None:
        self._pending_aborts.extend(
            (self._replica_of.get(self._child_parent.get(cid, ""), 0), cid) for cid in child_ids)
        self._flush_aborts()

    def _flush_aborts(self) -> None:
        """Sends the aborts not yet sent; with a send queue full they wait for the next
        engine message (an abort must not be lost: the request would hold its blocks)."""
        if not self._pending_aborts or self.dead:
            return
        pending, self._pending_aborts = self._pending_aborts, []
        for replica in sorted({r for r, _ in pending}):
            ids = [cid for r, cid in pending if r == replica]
            try:
                self._send(ipc.AbortRequests(ids), replica)
            except RequestRejected:
                self._pending_aborts += [(replica, cid) for cid in ids]
            except EngineDeadError:
                return  # nothing left to abort

    def _forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        children = self._children.pop(request_id, [])
        for cid in children:
            self._child_parent.pop(cid, None)
        replica = self._replica_of.pop(request_id, None)
        if replica is not None and children:
            self.router.finished(replica, len(children))
        for obs in self.observers:
            obs.on_done(request_id)

    def _send(self, msg, replica: int = 0) -> None:
        """Never blocks (the event loop must not wait on its peer). A full send queue is
        backpressure, not death: the message's request is refused (RequestRejected 503),
        the engine serves on; whether the engine lives is the process watch's and its
        Fatal message's to say."""
        self._check_exits()
        if self.dead:
            raise EngineDeadError(self.dead)
        try:
            self.cores[replica].send(msg)
        except zmq.Again:
            logger.warning("the engine's input queue is full: a request is refused (503)")
            raise RequestRejected("the server is busy: the engine's input queue is full; "
                                  "retry later", 503) from None

    # -- engine messages -----------------------------------------------------------------
    async def _read_loop(self, core: CoreProcess) -> None:
        while True:
            msg = await core.recv()
            self._flush_aborts()
            if isinstance(msg, ipc.Outputs):
                self._on_outputs(msg, core)
            elif isinstance(msg, ipc.Rejected):
                parent = self._child_parent.get(msg.request_id)
                if parent in self._queues:
                    self._queues[parent].fail(RequestRejected(msg.message, msg.status))
            elif isinstance(msg, ipc.Fatal):
                self._fail(f"the engine failed: {msg.message}")

    def _on_outputs(self, msg: ipc.Outputs, core: CoreProcess) -> None:
        now = time.monotonic()
        core.stats = msg.stats
        self.router.kv_usage[core.index] = msg.stats.kv_usage
        self.stats = msg.stats if len(self.cores) == 1 else sum_stats(
            [c.stats for c in self.cores])
        for obs in self.observers:
            obs.on_stats(self.stats, msg.queue_times)
        for out in self._process(msg.outputs):
            for obs in self.observers:
                obs.on_output(out.request_id, out, now)
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put(out)

    def _check_exits(self) -> None:
        for core in self.cores:
            code = core.exited()
            if code is not None:
                self._fail(f"{core.name} exited with code {code}")

    async def _watch(self) -> None:
        while not self.dead:
            self._check_exits()
            await asyncio.sleep(0.25)

    def fail_in_flight(self, message: str, status: int = 503) -> int:
        """Ends every request in flight with RequestRejected(message, status) (a server
        that stops draining: each client gets an answer, not a cut connection); their
        generators abort them in the engine. Returns how many were ended."""
        queues = list(self._queues.values())
        for queue in queues:
            queue.fail(RequestRejected(message, status))
        return len(queues)

    def _fail(self, message: str) -> None:
        if self.dead:
            return
        self.dead = message
        logger.error("%s; failing %d in-flight request(s)", message, len(self._queues))
        for queue in self._queues.values():
            queue.fail(EngineDeadError(message))
        if self.on_dead is not None:
            self.on_dead(message)
