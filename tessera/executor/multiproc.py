"""MultiprocExecutor: one worker process per rank (TP x PP of them), each a Worker.

Flow: start N `tessera.executor.worker_proc` processes (the config, model metadata
included, as JSON on the command line; a free port on ParallelConfig.distributed_init_host
for the process group; IPC sockets in a private folder), then the protocol of
executor/messaging.py: Hellos, InitCache, a Step per step. A worker process that exits
is a WorkerFailure at the next wait.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

from tessera.config import EngineConfig
from tessera.executor.messaging import STARTUP_TIMEOUT_S, MessagingExecutor, WorkerFailure
from tessera.logs import level_name

__all__ = ["MultiprocExecutor", "WorkerFailure", "STARTUP_TIMEOUT_S", "free_port"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MultiprocExecutor(MessagingExecutor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self._procs: list[subprocess.Popen] = []
        self._tmp = tempfile.mkdtemp(prefix="tessera-workers-")
        out_addr, inboxes = self._bind(f"ipc://{self._tmp}/results",
                                       lambda rank: f"ipc://{self._tmp}/rank{rank}")
        host = config.parallel.distributed_init_host
        dist_init = f"tcp://{host}:{free_port(host)}"
        config_json = config.to_json()
        for rank, addr in enumerate(inboxes):
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "tessera.executor.worker_proc", "--config",
                 config_json, "--dist-init", dist_init, "--input", addr, "--output", out_addr,
                 "--rank", str(rank), "--parent-pid", str(os.getpid()),
                 "--log-level", level_name()], stdin=subprocess.DEVNULL))
        self._greet()

    def _check_alive(self) -> str:
        for rank, proc in enumerate(self._procs):
            if proc.poll() is not None:
                return f"worker {rank} exited with code {proc.returncode}"
        return ""

    def _stop_workers(self) -> None:
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
