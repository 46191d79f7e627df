"""Connection guards (issue 17): a request that arrives too slowly is answered 408 and
dropped (slowloris), a connection beyond --max-connections is answered 503 at once, and
a slow but timely request is served. One server of its own (the default model, CPU) with
--max-connections 6 and --request-read-timeout 1.
"""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.helpers.launch import start_server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("guards")), "--num-blocks", "64",
                       "--max-connections", "6", "--request-read-timeout", "1")
    yield srv
    srv.stop()


def _connect(srv) -> socket.socket:
    host, port = srv.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_request_that_arrives_too_slowly_gets_408_and_is_dropped(guarded):
    socks = [_connect(guarded) for _ in range(3)]
    for s in socks:  # headers begun, never finished
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n")
    idle = _connect(guarded)  # nothing sent at all
    start = time.monotonic()
    for s in [*socks, idle]:
        status, body = _response(s)
        assert status == 408 and "--request-read-timeout" in body["error"]["message"]
        s.close()
    assert time.monotonic() - start < 5
    assert httpx.get(guarded.base_url + "/health", timeout=10).status_code == 200


def test_a_connection_beyond_the_limit_gets_503_and_the_server_recovers(guarded):
    held = [_connect(guarded) for _ in range(6)]
    time.sleep(0.2)
    extra = _connect(guarded)
    status, body = _response(extra)  # at once: closed before anything is read
    assert status == 503 and "too many open connections" in body["error"]["message"]
    for s in held:
        s.close()
    time.sleep(0.3)
    assert httpx.get(guarded.base_url + "/health", timeout=10).status_code == 200


def test_a_slow_but_timely_request_is_served(guarded):
    sock = _connect(guarded)
    body = json.dumps({"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 2})
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nConnection: close\r\n")
    time.sleep(0.4)
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body))
    time.sleep(0.4)
    sock.sendall(body.encode())
    status, answer = _response(sock)
    sock.close()
    assert status == 200 and answer["choices"][0]["finish_reason"] == "length"
