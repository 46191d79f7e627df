"""A live `tessera serve` process (the default model, on CPU) for the server tests.

`server` is shared by the whole session; `start_server(*args)` starts another one (e.g.
with --api-key) and the returned handle stops it. Only loopback addresses are used.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_server(tmp_dir: str, *args: str, timeout: float = 240.0) -> LiveServer:
    port = free_port()
    log_path = os.path.join(tmp_dir, f"server-{port}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "tessera.cli", "serve", "--port", str(port),
                             *args], stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"server did not start in {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("server")), "--num-blocks", "600",
                       "--max-waiting", "1024", "--stats-interval", "2")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def model_name() -> str:
    return "SmolLM2-135M-Instruct"
