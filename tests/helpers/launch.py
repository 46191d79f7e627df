"""Start `tessera serve` in a child process and wait until it answers /health.

Objects: LiveServer (the process, its base URL and log file; `v1`, `log()`, `stop()`),
`start_server(log_dir, *serve_args, timeout)` and `free_port()`. The child listens on a
free loopback port and writes its output to `server-<port>.log` in log_dir. Used by the
server tests and benchmarks/serving.py.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from typing import Optional

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class LiveServer:
    proc: subprocess.Popen
    base_url: str
    log_path: str

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_server(log_dir: str, *serve_args: str, timeout: float = 240.0,
                 env: Optional[dict[str, str]] = None) -> LiveServer:
    """`python -m tessera.cli serve --port P *serve_args`, up once /health answers 200;
    RuntimeError with the log's tail if it exits or is not up within timeout seconds.
    env: the child's environment (default: this process's)."""
    port = free_port()
    log_path = os.path.join(log_dir, f"server-{port}.log")
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "tessera.cli", "serve", "--port",
                                 str(port), *serve_args], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"server did not start in {timeout:.0f} s:\n{server.log()[-4000:]}")
