"""A fault inside an engine step, on a live server (issue 17): the request it hits gets a
500 in the OpenAI shape (an incident id, no internals; streaming: an error event, then
[DONE]), the streams beside it finish with their usual answer, and the server serves on
with every KV block free.

The fault is injected into the engine process only, by a `sitecustomize` module on the
server's PYTHONPATH (no test hook in Tessera): setting up a request with seed 666 raises,
and so does a step holding a request with seed 667 once it has three tokens.
"""
from __future__ import annotations

import concurrent.futures
import os
import textwrap

import httpx
import openai
import pytest

from tests.helpers.launch import start_server
from tests.server.helpers import assert_error, sse_events, wait_until_idle

INJECTOR = textwrap.dedent('''
    import sys

    def _inject():
        from tessera.worker import model_runner as mr
        make = mr.ModelRunner._make_generator

        def make_generator(self, seed):
            if seed == 666:
                raise KeyError("injected: a bug setting up a request")
            return make(self, seed)
        mr.ModelRunner._make_generator = make_generator
        prepare = mr.prepare_inputs

        def prepare_inputs(states, scheduled, *args, **kwargs):
            if any(states[rid].params.seed == 667  # mid-generation: 3 tokens out
                   and len(states[rid].token_ids) - states[rid].num_prompt_tokens >= 3
                   for rid in scheduled):
                raise ValueError("injected: a bug preparing a step")
            return prepare(states, scheduled, *args, **kwargs)
        mr.prepare_inputs = prepare_inputs

    if "tessera.engine.core_proc" in getattr(sys, "orig_argv", []):  # the engine process
        _inject()
''')


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    (folder / "sitecustomize.py").write_text(INJECTOR)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), os.getcwd(), env.get("PYTHONPATH", "")])
    srv = start_server(str(folder), "--num-blocks", "256", "--cpu-threads", "1", env=env)
    yield srv
    srv.stop()


def _greedy(sdk: openai.OpenAI, model: str, prompt: str) -> str:
    r = sdk.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    return r.choices[0].text


def test_a_request_that_fails_in_the_engine_gets_a_500_alone(faulty_server, model_name):
    sdk = openai.OpenAI(base_url=faulty_server.v1, api_key="x", max_retries=0, timeout=120)
    prompts = [f"Write a line about the number {i}." for i in range(4)]
    before = [_greedy(sdk, model_name, p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        beside = [pool.submit(_greedy, sdk, model_name, p) for p in prompts]
        with pytest.raises(openai.InternalServerError) as info:
            sdk.completions.create(model=model_name, prompt="Hello", max_tokens=12,
                                   temperature=1.0, seed=666)
        assert [f.result() for f in beside] == before
    assert "incident" in str(info.value) and "injected" not in str(info.value)
    with httpx.Client(base_url=faulty_server.base_url, timeout=120) as api:
        r = api.post("/v1/chat/completions", json={  # failed before its first token
            "model": model_name, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 12, "seed": 666, "stream": True})
        assert_error(r, 500, contains="incident")
        events = sse_events(api, "/v1/completions", {  # failed mid-stream
            "model": model_name, "prompt": "Hi", "max_tokens": 12, "seed": 667,
            "temperature": 1.0, "ignore_eos": True, "stream": True})
        assert events[-1] == "[DONE]" and len(events) >= 3
        assert "incident" in events[-2]["error"]["message"], events[-2:]
        r = api.post("/v1/completions", json={"model": model_name, "prompt": "Hi",
                                              "max_tokens": 8, "seed": 667,
                                              "ignore_eos": True})
        assert_error(r, 500, contains="incident")
        assert api.get("/health").status_code == 200
    assert wait_until_idle(faulty_server.base_url, 60), "KV blocks or requests left behind"
    assert [_greedy(sdk, model_name, p) for p in prompts] == before
    log = faulty_server.log()
    assert "injected: a bug setting up a request" in log and "the engine goes on" in log
    assert faulty_server.proc.poll() is None
