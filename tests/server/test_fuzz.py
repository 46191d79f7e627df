"""Schemathesis over the server's own OpenAPI document (issue 17): every route, OpenAI's and
KServe's, gets generated requests (valid and invalid bodies, paths and queries) and must
answer each without a server error (no 5xx), in JSON for every error; afterwards the engine
still serves, every KV block is free, and a greedy answer is what it was before.

Generation is seeded (derandomized), so CI runs the same cases every time; the number per
route is bounded (FUZZ_EXAMPLES, default 20). Paths name the served model (unknown
names are test_kserve's subject), so the KServe bodies reach their handlers. Generated sampling settings are clamped
(max_tokens <= 4, n <= 2, no more than 4 prompts) so that a case costs milliseconds of
decoding: the bounds themselves are the hostile-request tests' subject.
"""
from __future__ import annotations

import os
from collections import Counter

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.helpers import wait_until_idle

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
SKIP = {"/metrics", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"}


def _clamp(body) -> None:
    """Keeps a generated body cheap to serve (the values' validation is still exercised)."""
    if not isinstance(body, dict):
        return
    for key, high in (("max_tokens", 4), ("max_completion_tokens", 4), ("n", 2),
                      ("best_of", 2), ("min_tokens", 2)):
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool):
            body[key] = max(min(body[key], high), -1)
        elif key in body and body[key] is None and key != "min_tokens":
            body[key] = high  # chat's null: up to the context, as OpenAI's
    if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 4:
        body["prompt"] = body["prompt"][:4]
    params = body.get("parameters")
    if isinstance(params, dict):
        _clamp(params)
    if "prompt" in body or "messages" in body:
        body.setdefault("max_tokens", 4)


def _greedy(base_url: str, model_name: str) -> list[int]:
    r = httpx.post(base_url + "/v1/completions", timeout=60, json={
        "model": model_name, "prompt": "The capital of France is", "max_tokens": 8,
        "temperature": 0, "logprobs": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["tokens"]


def test_generated_requests_get_no_server_error(server, model_name):
    before = _greedy(server.base_url, model_name)
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    failures, statuses = [], Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIP:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            _clamp(case.body)
            if case.path_parameters:  # the served model (unknown names: test_kserve's 404s)
                case.path_parameters.update(
                    {k: v for k, v in (("name", model_name), ("version", "1"))
                     if k in case.path_parameters})
            response = case.call(base_url=server.base_url, timeout=60)
            statuses[operation.path, response.status_code // 100] += 1
            if response.status_code >= 500:
                failures.append((operation.method, operation.path, case.body,
                                 response.status_code, response.text[:300]))
            elif response.status_code >= 400:
                body = response.json()  # an error is JSON in the OpenAI shape
                assert {"message", "code"} <= body["error"].keys(), body
        run()
    assert not failures, failures[:5]
    for path in ("/v1/completions", "/v1/chat/completions", "/v2/models/{name}/generate",
                 "/v2/models/{name}/infer"):
        assert statuses[path, 4] > 0  # generated bodies were refused ...
    assert statuses["/v1/completions", 2] > 0  # ... and accepted
    assert sum(n for (path, kind), n in statuses.items() if "generate" in path and kind == 2)
    assert wait_until_idle(server.base_url, 60), "requests or KV blocks left behind"
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    assert _greedy(server.base_url, model_name) == before
