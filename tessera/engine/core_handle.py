"""CoreProcess: one engine core in a process of its own (`python -m
tessera.engine.core_proc`), as the API process's MPClient sees it: its sockets, its
process, its Ready, its latest Stats.

Flow: `launch(timeout)` makes a private IPC folder, binds a PUSH socket (ClientMessages
out) and a PULL socket (EngineMessages in), starts the process (the config, model metadata
included, as JSON on the command line; `env` adds to its environment, e.g. the GPUs of a
data-parallel replica) and waits for Ready, or raises with the Fatal message's reason.
`send(msg)` never blocks: a full queue raises zmq.Again. `recv()` awaits the next message;
`exited()` is the exit code once the process is gone; `stop()` sends Shutdown, waits 10 s,
then kills, and removes the folder.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

import zmq
import zmq.asyncio

from tessera.config import EngineConfig
from tessera.engine import ipc
from tessera.logs import level_name


class CoreProcess:
    def __init__(self, config: EngineConfig, index: int = 0,
                 env: Optional[dict[str, str]] = None):
        self.config, self.index, self.env = config, index, env or {}
        self.ready: Optional[ipc.Ready] = None
        self.stats = ipc.Stats()
        self._proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[str] = None

    @property
    def name(self) -> str:
        return f"engine process {self.index}" if self.index else "the engine process"

    async def launch(self, ready_timeout_s: float) -> ipc.Ready:
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
             "--log-level", level_name()], stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None)
        deadline = time.monotonic() + ready_timeout_s
        while self.ready is None:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self._proc.returncode} "
                                   "while starting (its log is above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready in time")
            if await self._from_engine.poll(200):
                msg = ipc.engine_decoder.decode(await self._from_engine.recv())
                if isinstance(msg, ipc.Fatal):
                    raise RuntimeError(f"the engine failed to start: {msg.message}")
                if isinstance(msg, ipc.Ready):
                    self.ready = msg
        self.stats = ipc.Stats(num_blocks=msg.num_blocks, free_blocks=msg.num_blocks)
        return self.ready

    def exited(self) -> Optional[int]:
        """The exit code once the process is gone, else None."""
        return None if self._proc is None else self._proc.poll()

    def send(self, msg) -> None:
        self._to_engine.send(ipc.encoder.encode(msg), flags=zmq.NOBLOCK)

    async def recv(self):
        return ipc.engine_decoder.decode(await self._from_engine.recv())

    async def stop(self) -> None:
        """Shutdown, then SIGKILL after 10 s (at once if it never became ready); closes the
        sockets and removes the IPC folder. Safe to call more than once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                if self.ready is None:
                    raise RuntimeError("not started")  # nothing to finish: stop it now
                self.send(ipc.Shutdown())
                await asyncio.to_thread(proc.wait, 10)
            except (subprocess.TimeoutExpired, zmq.ZMQError, RuntimeError,
                    asyncio.CancelledError):
                proc.kill()
                proc.wait()
        for sock in ("_to_engine", "_from_engine"):
            if hasattr(self, sock):
                getattr(self, sock).close(linger=0)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
