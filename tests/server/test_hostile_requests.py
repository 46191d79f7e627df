"""Requests that used to take the whole server down (issue 17, "Critical"), against the
shared live server: each is now a 400 in the OpenAI error shape for that request alone,
and afterwards the server answers the same greedy completion as before, with every KV
block free.

- a boolean where an integer goes (KServe generate `max_tokens`, `logprobs`,
  `prompt_logprobs`: the engine's strict decoder refused the frame and the engine died);
- `top_k` of 2^63 (overflowed the worker's int64 tensor), integers past 2^64 (msgpack
  could not encode them: a plain-text 500);
- `min_tokens` with a stop id outside the vocabulary (the sampler indexed logits with it);
- fan-out: KServe `n` of 120000 (computed n samples, returned the first) and 7000
  prompts x n = 16 on /v1/completions (filled the send queue: the healthy engine was
  declared dead); the server takes at most --max-waiting (1024 here) sequences a request;
- NaN and Infinity for temperature and penalties (NaN answered token 0 every step).
"""
from __future__ import annotations

import json

import httpx
import pytest

from tests.server.helpers import assert_error, wait_until_idle

TIMEOUT = httpx.Timeout(300.0, connect=10.0)
GREEDY = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def before(http, model_name) -> str:
    r = http.post("/v1/completions", json={"model": model_name, **GREEDY})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def raw_post(http, path: str, text: str) -> httpx.Response:
    """A JSON body as written (NaN and integers past 2^64 included)."""
    return http.post(path, content=text, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("field", ["max_tokens", "logprobs", "prompt_logprobs"])
def test_kserve_boolean_for_an_integer(http, model_name, before, field):
    r = http.post(f"/v2/models/{model_name}/generate",
                  json={"text_input": "Hi", "parameters": {field: True}})
    assert_error(r, 400, param=field, contains="integer")


@pytest.mark.parametrize("fields,param", [
    ('"temperature": 1, "top_k": 9223372036854775808', "top_k"),
    ('"top_k": 18446744073709551616', "top_k"),
    ('"max_tokens": 18446744073709551616', "prompt"),  # past the context: said so
    ('"stop_token_ids": [18446744073709551616]', "stop_token_ids"),
    ('"repetition_penalty": 18446744073709551616', None),  # a valid number, made a float
    ('"min_tokens": 1, "stop_token_ids": [1000000000]', "stop_token_ids"),
    ('"temperature": NaN', "temperature"),
    ('"temperature": Infinity', "temperature"),
    ('"presence_penalty": NaN', "presence_penalty"),
], ids=["top_k-2^63", "top_k-2^64", "max_tokens-2^64", "stop_id-2^64", "rep_penalty-2^64",
        "stop_id-outside-vocab", "nan-temperature", "inf-temperature", "nan-penalty"])
def test_completions_values_out_of_range(http, model_name, before, fields, param):
    body = f'{{"model": {json.dumps(model_name)}, "prompt": "Hi", "max_tokens": 2, {fields}}}'
    r = raw_post(http, "/v1/completions", body)
    if param is None:
        assert r.status_code == 200, r.text
        return
    assert_error(r, 400, param=param)


def test_kserve_n_is_one(http, model_name, before):
    r = http.post(f"/v2/models/{model_name}/generate",
                  json={"text_input": "Hi", "parameters": {"n": 120000}})
    assert_error(r, 400, param="n", contains="n must be 1")
    r = http.post(f"/v2/models/{model_name}/generate", json={"text_input": "Hi", "n": 2})
    assert_error(r, 400, param="n")


def test_fan_out_past_the_queue_is_refused_before_anything_is_sent(http, model_name, before):
    r = http.post("/v1/completions", json={"model": model_name, "prompt": ["a"] * 7000,
                                           "n": 16, "max_tokens": 1})
    assert_error(r, 400, contains="112000 sequences")
    texts = ["a"] * 1025
    r = http.post(f"/v2/models/{model_name}/infer", json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1025],
                    "data": texts}]})
    assert_error(r, 400, contains="1025 sequences")


def test_malformed_text_is_a_400(http, model_name, before):
    """Each was a 500: a lone surrogate reached the tokenizer, a number as a text part's
    text, and the template iterating `tools: 5`."""
    r = raw_post(http, "/v1/completions", f'{{"model": {json.dumps(model_name)}, '
                                          f'"prompt": "a\\ud800b", "max_tokens": 2}}')
    assert_error(r, 400, contains="lone surrogate")
    chat = {"model": model_name, "max_tokens": 2}
    r = http.post("/v1/chat/completions", json={**chat, "messages": [
        {"role": "user", "content": [{"type": "text", "text": 5}]}]})
    assert_error(r, 400, contains="must be a string")
    r = http.post("/v1/chat/completions", json={**chat, "chat_template_kwargs": {"tools": 5},
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert_error(r, 400, contains="chat template error")
    r = http.post("/v1/chat/completions", json={**chat, "messages": [
        {"role": "wizard", "content": "hi"}]})  # any role used to be rendered
    assert_error(r, 400, param="messages.0.role")


@pytest.mark.parametrize("route", ["completions", "chat", "kserve"])
def test_a_stream_refused_by_the_engine_client_is_a_400_status(http, model_name, before, route):
    """A stop id outside the vocabulary is found where the request is admitted: the
    stream's status says so (it used to be a 200 with an error event)."""
    bad = {"max_tokens": 4, "min_tokens": 1, "stop_token_ids": [10**9]}
    if route == "kserve":
        r = http.post(f"/v2/models/{model_name}/generate_stream",
                      json={"text_input": "Hi", "parameters": bad})
    elif route == "chat":
        r = http.post("/v1/chat/completions", json={
            "model": model_name, "messages": [{"role": "user", "content": "Hi"}],
            "stream": True, **bad})
    else:
        r = http.post("/v1/completions", json={"model": model_name, "prompt": ["Hi", "Ho"],
                                               "stream": True, **bad})
    assert_error(r, 400, contains="outside the vocabulary")


def test_a_prompt_too_long_to_fit_is_refused_before_tokenizing(http, model_name, before):
    """3 MB of text cannot fit 8192 tokens of SmolLM2 whatever its tokens (its longest is
    162 bytes): refused by size (tokenizing it held the event loop for seconds)."""
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "x" * 3_000_000})
    assert_error(r, 400, contains="more than can fit the model's context")


def test_errors_outside_the_routes_take_the_openai_shape(http, model_name, before):
    assert_error(http.get("/v1/nothing-here"), 404, contains="no such route")
    assert_error(http.delete("/v1/completions"), 405)
    r = http.post(f"/v2/models/{model_name}/infer", json={"inputs": 5})
    assert_error(r, 400, param="inputs")


def test_the_server_is_whole_afterwards(http, server, model_name, before):
    assert http.get("/health").status_code == 200
    r = http.post("/v1/completions", json={"model": model_name, **GREEDY})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == before
    assert wait_until_idle(server.base_url, 30)


def test_a_null_max_tokens_on_completions_is_the_default_16(http, model_name):
    """OpenAI documents max_tokens "integer or null, defaults to 16" for completions; null
    ran to the full context (issue 17)."""
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "Count: 1, 2,",
                                           "max_tokens": None, "ignore_eos": True,
                                           "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
