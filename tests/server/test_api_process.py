"""The API process of `tessera serve` runs without torch (frontend/torch_free.py): no
torch library is mapped into it, while its engine-core child process has torch (so the
check can tell the two apart). The session's server serves the default GGUF model, whose
tokenizer came from a folder exported by a subprocess (frontend/gguf_tokenizer.py)."""
from __future__ import annotations

import time

import psutil


def _maps_torch(pid: int) -> bool:
    return any("libtorch" in m.path for m in psutil.Process(pid).memory_maps())


def _engine(server_pid: int) -> psutil.Process:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in psutil.Process(server_pid).children():
            if "tessera.engine.core_proc" in " ".join(child.cmdline()):
                return child
        time.sleep(0.2)
    raise AssertionError("no engine-core child process")


def test_the_api_process_has_no_torch_and_the_engine_has(server):
    assert not _maps_torch(server.proc.pid)
    assert _maps_torch(_engine(server.proc.pid).pid)
