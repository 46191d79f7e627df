"""Failure paths of `tessera serve`, each on a server of its own (started here).

- API key: requests to /v1, /v2, /tokenize, /detokenize need "Authorization: Bearer KEY";
  /health stays open.
- Body bound: a body over --max-body-bytes is answered 413 (OpenAI error shape), whether
  it announces its length or arrives chunked, and the server goes on serving.
- Bounded queue: with --max-num-seqs 1 --max-waiting 2, a burst is partly refused with
  503; the rest complete; afterwards nothing is left running and the KV cache is empty.
- Engine death: killing the engine process mid-stream ends the stream (error event or
  closed connection, never a hang), /health says 503, and the server exits non-zero.

The key, body and queue checks share one server (auth header sent everywhere).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from tests.helpers.launch import start_server
from tests.server.helpers import assert_error, wait_until_idle

KEY = "secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 2000
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """API key, a 2000-byte body bound, one running sequence and two waiting at most."""
    srv = start_server(str(tmp_path_factory.mktemp("guarded")), "--api-key", KEY,
                       "--max-body-bytes", str(MAX_BODY), "--max-num-seqs", "1",
                       "--max-waiting", "2", "--num-blocks", "600", "--stats-interval", "1")
    yield srv
    srv.stop()


# -- API key ----------------------------------------------------------------------------------
PROTECTED = [("GET", "/v1/models", None), ("GET", "/v2", None),
             ("POST", "/tokenize", {"prompt": "hello"}),
             ("POST", "/detokenize", {"tokens": [1, 2]}),
             ("GET", "/metrics", None), ("GET", "/openapi.json", None), ("GET", "/docs", None)]


@pytest.mark.parametrize("method,path,body", PROTECTED, ids=[p[1] for p in PROTECTED])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY},
                                     {"Authorization": f"Bearer {KEY}x"},
                                     {"X-Api-Key": KEY}],
                         ids=["none", "wrong", "no-bearer", "longer", "other-header"])
def test_missing_or_wrong_key_is_401(guarded, method, path, body, headers):
    r = httpx.request(method, guarded.base_url + path, json=body, headers=headers,
                      timeout=TIMEOUT)
    err = assert_error(r, 401)
    assert err["type"] == "authentication_error"
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path,body", PROTECTED, ids=[p[1] for p in PROTECTED])
def test_right_key_is_200(guarded, method, path, body):
    r = httpx.request(method, guarded.base_url + path, json=body, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200, r.text


def test_completion_needs_the_key(guarded):
    body = {"prompt": "hi", "max_tokens": 2, "temperature": 0}
    assert_error(httpx.post(guarded.v1 + "/completions", json=body, timeout=TIMEOUT), 401)
    r = httpx.post(guarded.v1 + "/completions", json=body, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_health_is_open(guarded):
    r = httpx.get(guarded.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    for probe in ("/v2/health/live", "/v2/health/ready"):  # Kubernetes probes carry no key
        assert httpx.get(guarded.base_url + probe, timeout=TIMEOUT).status_code == 200


def test_the_scheme_is_case_insensitive(guarded):
    for scheme in ("bearer", "BEARER"):
        r = httpx.get(guarded.v1 + "/models", headers={"Authorization": f"{scheme} {KEY}"},
                      timeout=TIMEOUT)
        assert r.status_code == 200, r.text


# -- body bound -------------------------------------------------------------------------------
def _big_completion() -> bytes:
    body = json.dumps({"prompt": "x" * (MAX_BODY + 500), "max_tokens": 2}).encode()
    assert len(body) > MAX_BODY
    return body


def _still_serves(srv) -> None:
    r = httpx.post(srv.v1 + "/completions", headers=AUTH, timeout=TIMEOUT,
                   json={"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_body_over_the_bound_is_413(guarded, path):
    r = httpx.post(guarded.base_url + path, content=_big_completion(), timeout=TIMEOUT,
                   headers={**AUTH, "content-type": "application/json"})
    err = assert_error(r, 413)
    assert str(MAX_BODY) in err["message"]
    _still_serves(guarded)


def test_body_within_the_bound_is_served(guarded):
    body = json.dumps({"prompt": "y " * 300, "max_tokens": 2, "temperature": 0}).encode()
    assert 600 < len(body) < MAX_BODY
    r = httpx.post(guarded.v1 + "/completions", content=body, timeout=TIMEOUT,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/v1/completions", "/v2/models/{model}/infer"])
def test_chunked_body_over_the_bound_is_413(guarded, model_name, path):
    """No Content-Length: the bound is enforced while the body is read."""
    if "infer" in path:
        payload = json.dumps({"inputs": [{"name": "text_input", "datatype": "BYTES",
                                          "shape": [1], "data": ["x" * (MAX_BODY + 500)]}]})
    else:
        payload = _big_completion().decode()

    def chunks():
        data = payload.encode()
        for i in range(0, len(data), 500):
            yield data[i:i + 500]

    r = httpx.post(guarded.base_url + path.format(model=model_name), content=chunks(),
                   headers={**AUTH, "content-type": "application/json"}, timeout=TIMEOUT)
    assert "content-length" not in r.request.headers
    err = assert_error(r, 413)
    assert str(MAX_BODY) in err["message"]
    _still_serves(guarded)


# -- bounded queue -----------------------------------------------------------------------------
def test_full_queue_refuses_with_503_and_recovers(guarded, model_name):
    n, max_tokens = 8, 32

    async def burst():
        async with httpx.AsyncClient(base_url=guarded.v1, headers=AUTH, timeout=TIMEOUT,
                                     limits=httpx.Limits(max_connections=n)) as client:
            return await asyncio.gather(*[client.post("/completions", json={
                "model": model_name, "prompt": f"Request number {i} says", "temperature": 0,
                "max_tokens": max_tokens, "ignore_eos": True}) for i in range(n)])

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert refused, statuses
    assert served, statuses
    for r in refused:
        err = assert_error(r, 503)
        assert err["type"] == "service_unavailable"
        assert "queue" in err["message"]
    for r in served:
        assert r.json()["usage"]["completion_tokens"] == max_tokens

    _still_serves(guarded)
    assert wait_until_idle(guarded.base_url, 15, AUTH), "requests or KV blocks left"


def test_a_refused_stream_is_a_503_status_not_an_event(guarded, model_name):
    """Streams are admitted before their 200: a full queue answers 503 as the status."""
    n = 8

    async def burst():
        async with httpx.AsyncClient(base_url=guarded.v1, headers=AUTH, timeout=TIMEOUT,
                                     limits=httpx.Limits(max_connections=n)) as client:
            async def one(i):
                body = {"model": model_name, "prompt": f"Stream {i} says", "max_tokens": 16,
                        "ignore_eos": True, "stream": True}
                async with client.stream("POST", "/completions", json=body) as r:
                    return r.status_code, (await r.aread()).decode()
            return await asyncio.gather(*[one(i) for i in range(n)])

    results = asyncio.run(burst())
    statuses = [status for status, _ in results]
    assert 503 in statuses and 200 in statuses, statuses
    for status, text in results:
        if status == 200:  # a served stream has no error event in it
            assert '"error"' not in text and text.rstrip().endswith("data: [DONE]"), text
        else:
            assert json.loads(text)["error"]["code"] == 503
    assert wait_until_idle(guarded.base_url, 15, AUTH), "requests or KV blocks left"


# -- engine death -------------------------------------------------------------------------------
def _engine_child(server_pid: int) -> psutil.Process:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in psutil.Process(server_pid).children():
            try:
                if "tessera.engine.core_proc" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no tessera.engine.core_proc child under pid {server_pid}")


def test_engine_death_fails_the_stream_and_stops_the_server(tmp_path_factory, model_name):
    srv = start_server(str(tmp_path_factory.mktemp("dying")), "--num-blocks", "600")
    try:
        engine = _engine_child(srv.proc.pid)
        body = {"model": model_name, "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 2000, "ignore_eos": True, "temperature": 0, "stream": True}
        events, closed, deltas = [], None, 0
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            with client.stream("POST", srv.v1 + "/chat/completions", json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                for line in lines:  # wait until tokens are flowing
                    if line.startswith("data: ") and '"content": "' in line \
                            and '"role"' not in line:
                        deltas += 1
                        if deltas >= 2:
                            break
                assert deltas >= 2, "the stream ended before the engine was killed"
                engine.kill()
                killed = time.monotonic()
                try:
                    for line in lines:
                        if line.startswith("data: "):
                            data = line[len("data: "):]
                            events.append(data if data == "[DONE]" else json.loads(data))
                        assert time.monotonic() - killed < 60, "the stream did not end"
                except httpx.TimeoutException:
                    pytest.fail("the stream hung after the engine died")
                except httpx.TransportError as e:  # the server closed the connection
                    closed = e
                ended = time.monotonic() - killed
        assert ended < 30, ended
        finishes = [c.get("finish_reason") for e in events if isinstance(e, dict)
                    for c in e.get("choices", [])]
        assert "length" not in finishes, "2000 tokens cannot have finished"
        errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
        assert closed is not None or errors, events[-3:]
        if errors:
            assert errors[-1]["code"] == 503, errors
            assert set(errors[-1]) == {"message", "type", "param", "code"}

        try:
            health = httpx.get(srv.base_url + "/health", timeout=10)
            assert_error(health, 503)
        except httpx.TransportError:
            pass  # the server has already stopped listening on its way out
        try:
            code = srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not exit after its engine died")
        assert code != 0
        assert not engine.is_running()
        if os.path.exists(srv.log_path):  # (pytest may prune old temp dirs meanwhile)
            assert "engine process exited" in srv.log()
    finally:
        srv.stop()


def test_requests_arriving_as_the_engine_dies_do_not_hang_the_server(tmp_path_factory,
                                                                       model_name):
    """Requests that arrive just after the engine died (before the server has noticed) must
    be failed like the others: answered 503 or refused, and the server must still exit."""
    srv = start_server(str(tmp_path_factory.mktemp("racing")), "--num-blocks", "600")
    try:
        engine = _engine_child(srv.proc.pid)
        results: list = []

        def fire(i: int) -> None:
            try:
                r = httpx.post(srv.v1 + "/completions", timeout=10.0, json={
                    "model": model_name, "prompt": f"hi {i}", "max_tokens": 2})
                results.append(r)
            except httpx.TimeoutException as e:
                results.append(e)
            except httpx.TransportError:
                results.append(None)  # refused or closed: the server is going away

        engine.kill()
        threads = []
        for i in range(25):  # spread over the first ~0.5 s after the kill
            t = threading.Thread(target=fire, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(0.02)
        for t in threads:
            t.join(30)
        hung = [r for r in results if isinstance(r, httpx.TimeoutException)]
        assert not hung, f"{len(hung)} of {len(results)} requests got no answer in 10 s"
        for r in results:
            if r is not None:
                assert_error(r, 503)
        try:
            code = srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not exit after its engine died")
        assert code != 0
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()  # a hung server ignores SIGTERM
            srv.proc.wait(30)
