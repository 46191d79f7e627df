"""Speculative decoding behind the HTTP API: `tessera serve --speculative-model` (the
default model as its own draft, CPU) answers exactly as the plain server does, streaming
included, through the openai SDK; /metrics counts the drafts (all accepted: the draft is
the model itself) and reports the acceptance rate and mean accepted length."""
from __future__ import annotations

import httpx
import openai
import pytest

from tessera.default_model import default_model_path
from tests.helpers.launch import start_server
from tests.server.helpers import metric, wait_until_idle


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("spec-server")), "--num-blocks", "200",
                       "--speculative-model", default_model_path(),
                       "--num-speculative-tokens", "3", "--no-speculative-adaptive",
                       "--stats-interval", "1")
    yield srv
    srv.stop()


def test_answers_equal_the_plain_servers(server, spec_server, model_name):
    plain = openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=120)
    spec = openai.OpenAI(base_url=spec_server.v1, api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    kw = dict(model=model_name, temperature=0, max_tokens=40, messages=messages)
    want = plain.chat.completions.create(**kw).choices[0].message.content
    got = spec.chat.completions.create(**kw)
    assert got.choices[0].message.content == want
    chunks = spec.chat.completions.create(**kw, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    prompt = "def add(a, b):\n    return a + b\n\ndef sub(a, b):"
    a = plain.completions.create(model=model_name, prompt=prompt, max_tokens=30,
                                 temperature=0, logprobs=2)
    b = spec.completions.create(model=model_name, prompt=prompt, max_tokens=30,
                                temperature=0, logprobs=2)
    assert b.choices[0].text == a.choices[0].text
    for x, y in zip(a.choices[0].logprobs.token_logprobs, b.choices[0].logprobs.token_logprobs):
        assert abs(x - y) < 1e-3
    assert wait_until_idle(spec_server.base_url, 60)
    body = httpx.get(spec_server.base_url + "/metrics").text
    drafted = metric(body, "tessera:spec_decode_num_draft_tokens_total")
    assert drafted > 0
    assert metric(body, "tessera:spec_decode_num_accepted_tokens_total") == drafted
    assert metric(body, "tessera:spec_decode_acceptance_rate") == 1.0
    assert 2.0 < metric(body, "tessera:spec_decode_mean_accepted_length") <= 4.0
