"""A CPU install without Triton serves the default model: Triton is only imported where
kernels run (layers/ops.py picks the PyTorch references on the CPU), so blocking its
import in every process (the API, the engine core and its in-process worker) changes
nothing a client sees. The block is a `sitecustomize` on PYTHONPATH that hides the package
from every process's path finder (frontend/torch_free.py: `hide_packages`), as where it is
not installed."""
from __future__ import annotations

import os
import textwrap

import httpx

from tests.helpers.launch import start_server

BLOCKER = textwrap.dedent('''
    from tessera.frontend.torch_free import hide_packages

    hide_packages("triton")
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
