"""MPClient: the engine core in a process of its own, over ZMQ (the API server's client).

It starts `python -m tessera.engine.core_proc` (the config, its resolved model metadata
included, as JSON on the command line), binds a PUSH socket (ClientMessages out) and a PULL
socket (EngineMessages in), and waits for Ready. `generate()` is an async iterator of
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
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import AsyncIterator, Callable, Optional

import zmq
import zmq.asyncio

from tessera.config import EngineConfig
from tessera.engine import ipc
from tessera.engine.client import Children, EngineClient
from tessera.engine.latest import Latest
from tessera.logs import level_name
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
    def __init__(self, config: EngineConfig, on_dead: Optional[Callable[[str], None]] = None):
        super().__init__(config)
        self.on_dead = on_dead
        self.ready: Optional[ipc.Ready] = None
        self.stats = ipc.Stats()
        self.dead: Optional[str] = None
        self.observers: list = []  # objects with on_output(parent_id, RequestOutput, now) etc.
        self._queues: dict[str, Latest] = {}  # request id -> its newest output
        self._child_parent: dict[str, str] = {}  # child request id -> its request
        self._children: dict[str, list[str]] = {}  # request id -> child ids sent
        self._pending_aborts: list[str] = []  # child ids to abort, not yet sent
        self._ids = itertools.count()
        self._tmp: Optional[str] = None  # the IPC sockets' folder, while the engine runs
        self._proc: Optional[subprocess.Popen] = None
        self._tasks: list[asyncio.Task] = []

    # -- life cycle ----------------------------------------------------------------------
    async def start(self, ready_timeout_s: float = 1800.0) -> ipc.Ready:
        """Starts the engine process and waits for it; on any failure or interruption
        (Ctrl-C included) the engine is stopped and the IPC folder removed before the
        error goes on."""
        try:
            return await self._launch(ready_timeout_s)
        except BaseException:
            await self.shutdown()
            raise

    async def _launch(self, ready_timeout_s: float) -> ipc.Ready:
        self._tmp = tempfile.mkdtemp(prefix="tessera-ipc-")
        in_addr, out_addr = f"ipc://{self._tmp}/in", f"ipc://{self._tmp}/out"
        self._sync_ctx = zmq.Context()
        self._to_engine = self._sync_ctx.socket(zmq.PUSH)
        self._to_engine.setsockopt(zmq.LINGER, 0)
        self._to_engine.setsockopt(zmq.SNDHWM, 100_000)
        self._to_engine.bind(in_addr)
        self._ctx = zmq.asyncio.Context()
        self._from_engine = self._ctx.socket(zmq.PULL)
        self._from_engine.bind(out_addr)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.engine.core_proc", "--config", self.config.to_json(),
             "--input", in_addr, "--output", out_addr, "--parent-pid", str(os.getpid()),
             "--log-level", level_name()], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout_s
        while self.ready is None:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the engine process exited with code {self._proc.returncode} "
                                   "while starting (its log is above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the engine process did not become ready in time")
            if await self._from_engine.poll(200):
                msg = ipc.engine_decoder.decode(await self._from_engine.recv())
                if isinstance(msg, ipc.Fatal):
                    raise RuntimeError(f"the engine failed to start: {msg.message}")
                if isinstance(msg, ipc.Ready):
                    self.ready = msg
        self.stats = ipc.Stats(num_blocks=self.ready.num_blocks, free_blocks=self.ready.num_blocks)
        self._tasks = [asyncio.create_task(self._read_loop()), asyncio.create_task(self._watch())]
        return self.ready

    async def shutdown(self) -> None:
        """Stops the engine (Shutdown, then SIGKILL after 10 s; at once if it is not ready
        yet), closes the sockets and removes the IPC folder. Safe to call more than once."""
        for task in self._tasks:
            task.cancel()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                if self.ready is None:
                    raise EngineDeadError("not started")  # nothing to finish: stop it now
                self._send(ipc.Shutdown())
                await asyncio.to_thread(proc.wait, 10)
            except (subprocess.TimeoutExpired, zmq.ZMQError, EngineDeadError,
                    asyncio.CancelledError):
                proc.kill()
                proc.wait()
        for sock in ("_to_engine", "_from_engine"):
            if hasattr(self, sock):
                getattr(self, sock).close(linger=0)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

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
        try:
            for cid, child_params in children:
                self._send(ipc.AddRequest(cid, prompt.token_ids, child_params))
                self._child_parent[cid] = request_id  # (replies are read after this)
                sent.append(cid)
        except RequestRejected:
            if sent:
                self._abort_children(list(sent))
            raise

    def _abort_children(self, child_ids: list[str]) -> None:
        self._pending_aborts.extend(child_ids)
        self._flush_aborts()

    def _flush_aborts(self) -> None:
        """Sends the aborts not yet sent; with the send queue full they wait for the next
        engine message (an abort must not be lost: the request would hold its blocks)."""
        if not self._pending_aborts or self.dead:
            return
        ids, self._pending_aborts = self._pending_aborts, []
        try:
            self._send(ipc.AbortRequests(ids))
        except RequestRejected:
            self._pending_aborts = ids + self._pending_aborts
        except EngineDeadError:
            pass  # nothing left to abort

    def _forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        for cid in self._children.pop(request_id, []):
            self._child_parent.pop(cid, None)
        for obs in self.observers:
            obs.on_done(request_id)

    def _send(self, msg) -> None:
        """Never blocks (the event loop must not wait on its peer). A full send queue is
        backpressure, not death: the message's request is refused (RequestRejected 503),
        the engine serves on; whether the engine lives is the process watch's and its
        Fatal message's to say."""
        if self._proc is not None and self._proc.poll() is not None:
            self._fail(f"the engine process exited with code {self._proc.returncode}")
        if self.dead:
            raise EngineDeadError(self.dead)
        try:
            self._to_engine.send(ipc.encoder.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("the engine's input queue is full: a request is refused (503)")
            raise RequestRejected("the server is busy: the engine's input queue is full; "
                                  "retry later", 503) from None

    # -- engine messages -----------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            msg = ipc.engine_decoder.decode(await self._from_engine.recv())
            self._flush_aborts()
            if isinstance(msg, ipc.Outputs):
                self._on_outputs(msg)
            elif isinstance(msg, ipc.Rejected):
                parent = self._child_parent.get(msg.request_id)
                if parent in self._queues:
                    self._queues[parent].fail(RequestRejected(msg.message, msg.status))
            elif isinstance(msg, ipc.Fatal):
                self._fail(f"the engine failed: {msg.message}")

    def _on_outputs(self, msg: ipc.Outputs) -> None:
        now = time.monotonic()
        self.stats = msg.stats
        for obs in self.observers:
            obs.on_stats(msg.stats, msg.queue_times)
        for out in self._process(msg.outputs):
            for obs in self.observers:
                obs.on_output(out.request_id, out, now)
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put(out)

    async def _watch(self) -> None:
        while self._proc.poll() is None:
            await asyncio.sleep(0.25)
        self._fail(f"the engine process exited with code {self._proc.returncode}")

    def _fail(self, message: str) -> None:
        if self.dead:
            return
        self.dead = message
        logger.error("%s; failing %d in-flight request(s)", message, len(self._queues))
        for queue in self._queues.values():
            queue.fail(EngineDeadError(message))
        if self.on_dead is not None:
            self.on_dead(message)
