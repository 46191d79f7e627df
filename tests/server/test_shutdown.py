"""SIGTERM drains (issue 17): requests in flight may finish within `--shutdown-timeout`;
those still running then get a 503 in the OpenAI shape (a stream: an error event, then
[DONE]) instead of a plain-text 500 or a cut connection, and the server stops its engine
and exits (by the signal, as uvicorn re-raises it).

One server of its own (the default model, CPU) with a 5 s timeout: a short request, a
long one and a long stream are in flight when SIGTERM comes.
"""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from tests.helpers.launch import start_server

LONG = {"model": "SmolLM2-135M-Instruct", "prompt": "Count:", "max_tokens": 4000, "ignore_eos": True,
        "temperature": 0}


def test_sigterm_lets_short_requests_finish_and_answers_the_rest_with_503(tmp_path):
    srv = start_server(str(tmp_path), "--num-blocks", "600", "--shutdown-timeout", "5",
                       "--cpu-threads", "1")  # steady steps even on a busy machine
    results: dict = {}
    streamed: list[str] = []
    first_chunk = threading.Event()

    def post(name: str, body: dict) -> None:
        r = httpx.post(srv.v1 + "/completions", json=body, timeout=60)
        results[name] = (r.status_code, r.json())

    def stream() -> None:
        with httpx.stream("POST", srv.v1 + "/completions", json={**LONG, "stream": True},
                          timeout=60) as r:
            results["stream"] = r.status_code
            for line in r.iter_lines():
                if line:
                    streamed.append(line)
                    first_chunk.set()

    try:
        threads = [threading.Thread(target=stream),
                   threading.Thread(target=post, args=("long", LONG))]
        for t in threads:
            t.start()
        assert first_chunk.wait(60), srv.log()[-2000:]
        time.sleep(0.5)  # the long non-streaming request is running too
        short = threading.Thread(target=post, args=(
            "short", {"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 4, "temperature": 0}))
        short.start()
        time.sleep(0.2)
        srv.proc.terminate()
        for t in [*threads, short]:
            t.join(30)
        code = srv.proc.wait(20)
    finally:
        srv.stop()
    assert results["short"][0] == 200, (results["short"], srv.log()[-3000:])
    assert results["short"][1]["choices"][0]["text"]
    status, body = results["long"]
    assert status == 503, body
    assert "shutting down" in body["error"]["message"] and body["error"]["code"] == 503
    assert results["stream"] == 200 and streamed[-1] == "data: [DONE]"
    error = json.loads(streamed[-2][len("data: "):])
    assert "shutting down" in error["error"]["message"]
    # uvicorn re-raises the signal once shut down: the parent sees a SIGTERM'd process
    assert code == -signal.SIGTERM, srv.log()[-2000:]
    assert "Application shutdown complete" in srv.log()
