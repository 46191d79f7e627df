"""The OpenAI Python SDK against a live `tessera serve` (default model, CPU)."""
from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client, model_name):
    assert [m.id for m in client.models.list().data] == [model_name]


def test_chat_answers_paris(client, model_name):
    r = client.chat.completions.create(model=model_name, temperature=0, max_tokens=32, messages=[
        {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10


def test_chat_logprobs_and_top_logprobs(client, model_name):
    r = client.chat.completions.create(model=model_name, temperature=0, max_tokens=6,
                                       logprobs=True, top_logprobs=3,
                                       messages=[{"role": "user", "content": "Say hi"}])
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy takes the best
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_completion_logprobs_and_echo(client, model_name):
    r = client.completions.create(model=model_name, prompt="The capital of France is",
                                  max_tokens=5, temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    assert c.text.startswith("The capital of France is")
    assert c.logprobs.token_logprobs[0] is None  # nothing predicts the first prompt token
    assert len(c.logprobs.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens
    assert all(len(t) <= 2 for t in c.logprobs.top_logprobs[1:])


def test_streaming_chat_with_usage(client, model_name):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = client.chat.completions.create(model=model_name, temperature=0, max_tokens=24,
                                          messages=messages).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model=model_name, temperature=0, max_tokens=24, messages=messages, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert any(ch.choices and ch.choices[0].finish_reason == "stop" for ch in chunks)


def test_streaming_completion(client, model_name):
    full = client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=16,
                                     temperature=0).choices[0].text
    parts = [ch.choices[0].text for ch in client.completions.create(
        model=model_name, prompt="Once upon a time", max_tokens=16, temperature=0, stream=True)
        if ch.choices]
    assert "".join(parts) == full


def test_n_and_seeded_sampling(client, model_name):
    kw = dict(model=model_name, prompt="My favourite animal is", max_tokens=12, temperature=1.0,
              n=3, seed=1234)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1


def test_stop_and_extra_body_fields(client, model_name):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=model_name, temperature=0, max_tokens=32,
                                       messages=msgs, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=model_name, prompt="Hello", max_tokens=20, temperature=0,
                                  extra_body={"ignore_eos": True, "top_k": 5, "min_p": 0.05,
                                              "repetition_penalty": 1.2})
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model=model_name, temperature=0, max_tokens=30,
                                       messages=msgs, extra_body={"min_tokens": 15})
    assert r.usage.completion_tokens >= 15


def test_errors_map_to_sdk_exceptions(client, model_name):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model_name, prompt="hi", temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="no-such-model", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 8192 tokens"):
        client.completions.create(model=model_name, prompt=[1] * 8000, max_tokens=500)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, messages=[])
    assert e.value.status_code == 400 and "messages" in str(e.value)


def test_repeated_system_prompt_hits_the_prefix_cache(client, model_name):
    system = {"role": "system", "content": "You are a terse assistant. " * 8}
    for question in ("Name a colour.", "Name a planet."):
        r = client.chat.completions.create(model=model_name, temperature=0, max_tokens=4,
                                           messages=[system, {"role": "user",
                                                              "content": question}])
    assert r.usage.prompt_tokens_details.cached_tokens >= 48  # the shared system prompt
