"""The API's event loop stays free while a prompt is prepared (issue 17, event-loop
safety), against a server with the defaults a deployment gets: tokenizing a 2.6 MB
prompt (seconds of work) runs in the prompt workers, so /health answers meanwhile, and
past --prompt-timeout the request is refused with a 400; a request's own chat_template
is refused unless the server trusts them (--trust-request-chat-template)."""
from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from tests.helpers.launch import start_server
from tests.server.helpers import assert_error

CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("strict")), "--num-blocks", "100",
                       "--prompt-timeout", "1")
    yield srv
    srv.stop()


def test_a_requests_chat_template_is_refused_by_default(strict_server):
    r = httpx.post(strict_server.base_url + "/v1/chat/completions", timeout=60, json={
        "messages": CHAT, "max_tokens": 1, "chat_template": "{{ messages[0]['content'] }}"})
    assert_error(r, 400, "chat_template", contains="--trust-request-chat-template")
    r = httpx.post(strict_server.base_url + "/v1/chat/completions", timeout=60,
                   json={"messages": CHAT, "max_tokens": 1})
    assert r.status_code == 200, r.text  # the model's own template


def test_tokenizing_a_huge_prompt_leaves_the_loop_free(strict_server):
    url = strict_server.base_url
    body = {"prompt": "hello world " * 215_000, "max_tokens": 1}  # 2.58 MB
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        big = pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=120)
        time.sleep(0.2)  # uploaded and being tokenized
        health = []
        while not big.done() and len(health) < 20:
            t = time.monotonic()
            assert httpx.get(url + "/health", timeout=30).status_code == 200
            health.append(time.monotonic() - t)
            time.sleep(0.05)
        r = big.result()
        took = time.monotonic() - start
    # too long to fit the context, or (on a slow machine) past the 1 s prompt timeout
    err = assert_error(r, 400)
    assert "longer than 1 s" in err["message"] or "context" in err["message"], err
    assert health, f"the prompt was refused in {took:.2f} s, before /health was asked"
    assert max(health) < 0.25, (health, took)  # on the loop, /health waited 0.6-0.9 s
