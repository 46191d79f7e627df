"""A CPU install without Triton serves the default model: Triton is only imported where
kernels run (layers/ops.py picks the PyTorch references on the CPU), so blocking its
import in every process (the API, the engine core and its in-process worker) changes
nothing a client sees. The block is a `sitecustomize` on PYTHONPATH whose path finder
does not find triton, as where the package is missing."""
from __future__ import annotations

import os
import textwrap

import httpx

from tests.helpers.launch import start_server

BLOCKER = textwrap.dedent('''
    import sys
    from importlib.machinery import PathFinder

    class NoTriton(PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                return None
            return PathFinder.find_spec(name, path, target)

    sys.meta_path[:] = [NoTriton if f is PathFinder else f for f in sys.meta_path]
''')


def test_the_default_model_is_served_without_triton(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.pop("TRITON_INTERPRET", None)
    server = start_server(str(tmp_path), "--num-blocks", "64", env=env)
    try:
        r = httpx.post(server.v1 + "/chat/completions", timeout=120, json={
            "model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
    finally:
        server.stop()
    log = server.log()
    assert "triton" not in log.lower(), log[-3000:]  # nothing even tried it
