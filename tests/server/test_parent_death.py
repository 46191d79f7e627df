"""No Tessera process outlives its parent (issue 17): the API process of `tessera serve`
killed with SIGKILL (as the OOM killer does) takes its engine process, and with
tensor parallelism the engine's worker processes, down within 10 s. Each case starts a
server of its own (the default model on the CPU; TP = 3 over gloo), collects every
process below the API process, kills the API process and waits for all of them to go.
"""
from __future__ import annotations

import time

import psutil
import pytest

from tests.helpers.launch import start_server


def _descendants_when_up(pid: int, expected: int, timeout: float = 30.0) -> list:
    """The API process's descendants once the engine and its workers are all there."""
    deadline = time.monotonic() + timeout
    while True:
        procs = psutil.Process(pid).children(recursive=True)
        engines = [p for p in procs if "tessera" in " ".join(p.cmdline())]
        if len(engines) >= expected or time.monotonic() > deadline:
            return engines
        time.sleep(0.2)


@pytest.mark.parametrize("tp", [1, 3], ids=["tp1", "tp3"])
def test_killing_the_api_process_leaves_no_tessera_process(tmp_path, tp):
    srv = start_server(str(tmp_path), "--num-blocks", "64", "-tp", str(tp))
    children: list = []
    try:
        children = _descendants_when_up(srv.proc.pid, 1 if tp == 1 else 1 + tp)
        assert children, "no engine process under the API process"
        if tp > 1:  # the engine and its tp workers
            assert len(children) >= 1 + tp, [" ".join(p.cmdline())[:120] for p in children]
        srv.proc.kill()
        srv.proc.wait(10)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [f"{p.pid}: {' '.join(p.cmdline())[:120]}" for p in alive]
    finally:  # never leak one into CI (only this server's: the session's server stays)
        for p in [srv.proc] + children:
            try:
                p.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
