"""The OpenAI-compatible HTTP API over plain HTTP (httpx), against the shared live server.

Covers /v1/models, /tokenize, /detokenize, /health, /metrics, the error shape of every
refused request, the prompt forms and options of /v1/completions, and the raw SSE of
streaming chat (and completions) responses. Small max_tokens throughout: CPU machine.
"""
from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.server.helpers import assert_error, metric, sse_events

TIMEOUT = httpx.Timeout(300.0, connect=10.0)
CONTEXT = 8192


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        yield client


def counts(usage: dict) -> dict:
    """The token counts of a usage object (cached-token details vary between calls)."""
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def complete(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def chat(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# -- /v1/models, /tokenize, /detokenize, /health -------------------------------------------
def test_models_lists_the_served_model(http, model_name):
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == model_name
    assert model["object"] == "model"
    assert model["max_model_len"] == CONTEXT


def test_tokenize_prompt_and_detokenize_round_trip(http, model_name):
    text = "Hello world, this is Tessera."
    r = http.post("/tokenize", json={"model": model_name, "prompt": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 3
    assert all(isinstance(t, int) for t in body["tokens"])
    assert body["max_model_len"] == CONTEXT
    r = http.post("/detokenize", json={"model": model_name, "tokens": body["tokens"]})
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == text


def test_tokenize_messages_applies_the_chat_template(http, model_name):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = http.post("/tokenize", json={"prompt": messages[0]["content"]}).json()
    templated = http.post("/tokenize", json={"messages": messages}).json()
    assert templated["count"] == len(templated["tokens"])
    assert templated["count"] > plain["count"]  # the template adds role markers
    text = http.post("/detokenize", json={"tokens": templated["tokens"]}).json()["prompt"]
    assert "<|im_start|>user" in text and messages[0]["content"] in text
    assert text.rstrip().endswith("<|im_start|>assistant")  # add_generation_prompt
    # the chat route counts the same prompt
    r = chat(http, model=model_name, messages=messages, max_tokens=1, temperature=0)
    assert r["usage"]["prompt_tokens"] == templated["count"]


def test_tokenize_needs_exactly_one_of_prompt_or_messages(http):
    assert_error(http.post("/tokenize", json={}), 400)
    assert_error(http.post("/tokenize", json={"prompt": "x", "messages": [
        {"role": "user", "content": "x"}]}), 400)


@pytest.mark.parametrize("bad", [10**7, -1])
def test_detokenize_out_of_vocab_is_400(http, bad):
    err = assert_error(http.post("/detokenize", json={"tokens": [1, bad]}), 400, param="tokens")
    assert str(bad) in err["message"]


def test_health(http):
    r = http.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


# -- /metrics ------------------------------------------------------------------------------
METRIC_NAMES = [
    "tessera:num_requests_running", "tessera:kv_cache_usage_perc", "tessera:prompt_tokens_total",
    "tessera:generation_tokens_total", "tessera:time_to_first_token_seconds_bucket",
    "tessera:e2e_request_latency_seconds_count", "tessera:request_queue_time_seconds_count",
    "tessera:inter_token_latency_seconds", "tessera:num_preemptions_total",
    "tessera:prefix_cache_hits_total",
]


def test_metrics_names_and_counters_grow(http, model_name):
    r = http.get("/metrics")
    assert r.status_code == 200
    before = r.text
    for name in METRIC_NAMES:
        assert name in before, name
    prompt0 = metric(before, "tessera:prompt_tokens_total")
    gen0 = metric(before, "tessera:generation_tokens_total")
    e2e0 = metric(before, "tessera:e2e_request_latency_seconds_count")
    ttft0 = metric(before, "tessera:time_to_first_token_seconds_count")

    out = complete(http, model=model_name, prompt="Counting tokens for the metrics test:",
                   max_tokens=5, temperature=0, ignore_eos=True)
    assert out["usage"]["completion_tokens"] == 5
    deadline = time.monotonic() + 10
    while True:
        after = http.get("/metrics").text
        grown = (metric(after, "tessera:prompt_tokens_total") >= prompt0 + 1
                 and metric(after, "tessera:generation_tokens_total") >= gen0 + 5)
        if grown or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert metric(after, "tessera:prompt_tokens_total") >= prompt0 + 1
    assert metric(after, "tessera:generation_tokens_total") >= gen0 + 5
    assert metric(after, "tessera:e2e_request_latency_seconds_count") >= e2e0 + 1
    assert metric(after, "tessera:time_to_first_token_seconds_count") >= ttft0 + 1
    assert 0.0 <= metric(after, "tessera:kv_cache_usage_perc") <= 1.0


def test_metrics_account_for_memory_and_blocks(http, model_name):
    """Memory by kind (worker/memory.py) and the KV blocks used / cached / free, which add
    up to the pool (a CPU engine: no allocator figures, no CUDA graphs)."""
    text = http.get("/metrics").text

    def labelled(name: str, label: str) -> dict[str, float]:
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            rf'^{name}{{[^}}]*{label}="([a-z_]+)"[^}}]*}} ([0-9.e+-]+)$', text, re.M)}
    memory = labelled("tessera:memory_bytes", "kind")
    assert memory["weights_device"] > 0 and memory["kv_cache"] > 0
    assert "weights_deduplicated" in memory and "cuda_graphs" not in memory
    blocks = labelled("tessera:kv_cache_blocks", "state")
    assert set(blocks) == {"used", "cached", "free"} and min(blocks.values()) >= 0
    usage = metric(text, "tessera:kv_cache_usage_perc")
    total = sum(blocks.values())
    assert abs(blocks["used"] / total - usage) < 1e-6


# -- errors in the OpenAI shape ------------------------------------------------------------
CHAT_MSG = [{"role": "user", "content": "hi"}]

ERROR_CASES = [
    # (path, body, status, param, message contains)
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "temperature"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "temperature": "hot"}, 400, "temperature",
     "temperature"),
    ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages", "messages"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt", "prompt"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature", "temperature"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "temperature": -1}, 400, "temperature",
     "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 2}, 400, "top_p", "top_p"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "top_p": 2}, 400, "top_p", "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 100}, 400, "n", None),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "n": 100}, 400, "n", None),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "max_tokens": 0}, 400, "max_tokens",
     "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "model": "no-such-model"}, 404, "model",
     "does not exist"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "model": "no-such-model"}, 404, "model",
     "does not exist"),
    ("/tokenize", {"prompt": "hi", "model": "no-such-model"}, 404, "model", "does not exist"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"1": 5}}, 400, "logit_bias",
     "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "logit_bias": {"1": 5}}, 400, "logit_bias",
     "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "top_logprobs": 2}, 400, "top_logprobs",
     "top_logprobs"),
    ("/v1/completions", {"prompt": []}, 400, None, None),
    ("/v1/completions", {"prompt": [-5, 3]}, 400, None, None),
    ("/v1/completions", {"prompt": "hi", "suffix": "x"}, 400, "suffix", None),
]


@pytest.mark.parametrize("path,body,status,param,contains", ERROR_CASES,
                         ids=[f"{c[0]}-{'-'.join(c[1])}-{c[2]}" for c in ERROR_CASES])
def test_errors_have_the_openai_shape(http, path, body, status, param, contains):
    body = {"max_tokens": 4, **body} if "max_tokens" not in body and "completions" in path \
        else body
    err = assert_error(http.post(path, json=body), status, param, contains)
    if status == 400:
        assert err["type"] == "invalid_request_error"
    if status == 404:
        assert err["type"] == "not_found_error"


CLIENT_MISTAKES = [
    # a chat template that does not compile is the client's mistake
    ("/v1/chat/completions", {"messages": CHAT_MSG, "chat_template": "{% if %}"}),
    # a seed that does not fit 64 bits cannot be honoured
    ("/v1/completions", {"prompt": "hi", "seed": 2**70}),
    ("/v1/chat/completions", {"messages": CHAT_MSG, "seed": 2**70}),
]


@pytest.mark.parametrize("path,body", CLIENT_MISTAKES,
                         ids=["bad-chat-template", "huge-seed-completion", "huge-seed-chat"])
def test_client_mistakes_are_400_not_500(server, path, body):
    # a fresh connection per request: after a 500 the server drops the connection
    r = httpx.post(server.base_url + path, json={"max_tokens": 2, **body}, timeout=TIMEOUT)
    assert_error(r, 400)


def test_chat_template_kwargs_may_set_add_generation_prompt(server):
    """chat_template_kwargs is passed to the template; a key the route also passes must not
    crash the request (it is either honoured or refused with 400)."""
    r = httpx.post(server.base_url + "/v1/chat/completions", timeout=TIMEOUT, json={
        "messages": CHAT_MSG, "max_tokens": 2,
        "chat_template_kwargs": {"add_generation_prompt": False}})
    if r.status_code != 200:
        assert_error(r, 400)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_invalid_json_body_is_400(http, path):
    r = http.post(path, content=b'{"prompt": "hi", "max_tokens": ',
                  headers={"content-type": "application/json"})
    assert_error(r, 400)


def test_completion_context_overflow_with_text(http, model_name):
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "hello " * 8100,
                                           "max_tokens": 500})
    err = assert_error(r, 400)
    assert err["message"].startswith(
        "This model's maximum context length is 8192 tokens. However, you requested"), err
    assert "for the completion" in err["message"]


def test_completion_context_overflow_with_token_ids_names_exact_counts(http, model_name):
    r = http.post("/v1/completions", json={"model": model_name, "prompt": [28] * 8000,
                                           "max_tokens": 500})
    err = assert_error(r, 400, param="prompt")
    assert err["message"].startswith(
        "This model's maximum context length is 8192 tokens. However, you requested 8500 "
        "tokens (8000 in your prompt; 500 for the completion)."), err


def test_chat_context_overflow(http, model_name):
    r = http.post("/v1/chat/completions", json={
        "model": model_name, "messages": [{"role": "user", "content": "hello " * 8100}],
        "max_tokens": 500})
    err = assert_error(r, 400, param="messages")
    assert err["message"].startswith(
        "This model's maximum context length is 8192 tokens. However, you requested"), err
    assert "in the messages" in err["message"]


# -- /v1/completions: prompt forms and options ----------------------------------------------
def test_two_prompts_with_n2_give_four_indexed_choices(http, model_name):
    prompts = ["The sky is", "My favourite food is"]
    out = complete(http, model=model_name, prompt=prompts, n=2, max_tokens=4, temperature=1.0,
                   seed=3, ignore_eos=True)
    assert out["object"] == "text_completion"
    assert sorted(c["index"] for c in out["choices"]) == [0, 1, 2, 3]
    for c in out["choices"]:
        assert c["finish_reason"] == "length"
        assert isinstance(c["text"], str) and c["text"]
    counts = [http.post("/tokenize", json={"prompt": p}).json()["count"] for p in prompts]
    assert out["usage"]["prompt_tokens"] == sum(counts)
    assert out["usage"]["completion_tokens"] == 4 * 4
    assert out["usage"]["total_tokens"] == sum(counts) + 16


@pytest.fixture(scope="module")
def greedy_texts(http, model_name) -> dict[str, str]:
    """Greedy 6-token completions of two prompts, by text."""
    prompts = ["The sky is", "Two plus two is"]
    out = complete(http, model=model_name, prompt=prompts, max_tokens=6, temperature=0)
    by_index = {c["index"]: c["text"] for c in out["choices"]}
    return {p: by_index[i] for i, p in enumerate(prompts)}


def test_prompt_as_token_ids_and_list_of_token_id_lists(http, model_name, greedy_texts):
    prompts = list(greedy_texts)
    ids = [http.post("/tokenize", json={"prompt": p}).json()["tokens"] for p in prompts]
    one = complete(http, model=model_name, prompt=ids[0], max_tokens=6, temperature=0)
    assert [c["index"] for c in one["choices"]] == [0]
    assert one["choices"][0]["text"] == greedy_texts[prompts[0]]
    assert one["usage"]["prompt_tokens"] == len(ids[0])
    many = complete(http, model=model_name, prompt=ids, max_tokens=6, temperature=0)
    texts = {c["index"]: c["text"] for c in many["choices"]}
    assert texts == {0: greedy_texts[prompts[0]], 1: greedy_texts[prompts[1]]}


def test_echo_with_logprobs(http, model_name):
    prompt = "The capital of France is"
    n_prompt = http.post("/tokenize", json={"prompt": prompt}).json()["count"]
    out = complete(http, model=model_name, prompt=prompt, max_tokens=3, temperature=0,
                   echo=True, logprobs=1)
    c = out["choices"][0]
    assert c["text"].startswith(prompt)
    assert len(c["text"]) > len(prompt)
    lp = c["logprobs"]
    assert len(lp["tokens"]) == n_prompt + out["usage"]["completion_tokens"]
    assert lp["token_logprobs"][0] is None  # nothing predicts the first prompt token
    assert all(isinstance(v, float) and v <= 0 for v in lp["token_logprobs"][1:])
    assert "".join(lp["tokens"]) == c["text"]
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"] == sorted(lp["text_offset"])
    # logprobs=1: one alternative per generated position, the greedy token itself
    for tok, top in zip(lp["tokens"][n_prompt:], lp["top_logprobs"][n_prompt:]):
        assert list(top) == [tok]


def test_stop_string_truncates(http, model_name):
    prompt = "Here is a list of fruits: apple, banana,"
    free = complete(http, model=model_name, prompt=prompt, max_tokens=10, temperature=0,
                    ignore_eos=True)["choices"][0]
    words = free["text"].split()
    assert len(words) >= 3, free
    stop = " " + words[2]
    assert stop in free["text"], (stop, free["text"])
    cut = complete(http, model=model_name, prompt=prompt, max_tokens=10, temperature=0,
                   ignore_eos=True, stop=[stop])["choices"][0]
    assert cut["text"] == free["text"][:free["text"].index(stop)]
    assert cut["finish_reason"] == "stop"
    assert cut["stop_reason"] == stop
    assert free["finish_reason"] == "length"


def test_seed_makes_sampling_reproducible(http, model_name):
    body = dict(model=model_name, prompt="Once upon a time", max_tokens=8, temperature=1.0,
                seed=1234, ignore_eos=True)
    a = complete(http, **body)["choices"][0]["text"]
    b = complete(http, **body)["choices"][0]["text"]
    assert a == b
    # temperature 1 really samples: three differently seeded samples are not all equal
    several = complete(http, **{**body, "n": 3})["choices"]
    assert len({c["text"] for c in several}) > 1


# -- streaming (raw SSE) ---------------------------------------------------------------------
def test_chat_stream_matches_the_non_streaming_answer(http, model_name):
    body = dict(model=model_name, messages=[{"role": "user", "content": "Name three colours."}],
                max_tokens=12, temperature=0)
    full = chat(http, **body)
    events = sse_events(http, "/v1/chat/completions",
                        {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" for e in chunks)
    assert len({e["id"] for e in chunks}) == 1
    first = chunks[0]["choices"][0]
    assert first["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert counts(usage_chunk["usage"]) == counts(full["usage"])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == full["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]
                if c["choices"][0].get("finish_reason")]
    assert finishes == [full["choices"][0]["finish_reason"]]
    assert all("usage" not in c or c["usage"] is None for c in chunks[:-1])


def test_completion_stream_matches_the_non_streaming_answer(http, model_name):
    body = dict(model=model_name, prompt="The three primary colours are", max_tokens=8,
                temperature=0)
    full = complete(http, **body)
    events = sse_events(http, "/v1/completions",
                        {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"] == []
    assert counts(chunks[-1]["usage"]) == counts(full["usage"])
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert text == full["choices"][0]["text"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]
                if c["choices"][0]["finish_reason"]]
    assert finishes == ["length"]


def _per_index_finishes(chunks: list[dict]) -> dict[int, list[str]]:
    seen: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice.get("finish_reason"):
                seen.setdefault(choice["index"], []).append(choice["finish_reason"])
    return seen


def test_chat_stream_n2_each_choice_finishes_once(http, model_name):
    """n=2 whose samples finish at different steps (seeded, stop at the first space).

    Each choice must get exactly one chunk with a finish_reason, and the usage chunk must
    count each choice's tokens once (as the non-streaming answer does).
    """
    body = dict(model=model_name, messages=[{"role": "user", "content": "Write a poem"}], n=2,
                temperature=1.0, seed=7, max_tokens=12, stop=[" "], logprobs=True)
    full = chat(http, **body)
    lengths = [len(c["logprobs"]["content"]) for c in full["choices"]]
    assert lengths[0] != lengths[1], "precondition: the two samples finish at different steps"
    assert full["usage"]["completion_tokens"] == sum(lengths)
    events = sse_events(http, "/v1/chat/completions", {
        **body, "logprobs": False, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts: dict[int, str] = {}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or "")
    assert texts == {c["index"]: c["message"]["content"] for c in full["choices"]}
    assert _per_index_finishes(chunks) == {0: ["stop"], 1: ["stop"]}
    assert counts(chunks[-1]["usage"]) == counts(full["usage"])


def test_completion_stream_n2_each_choice_finishes_once(http, model_name):
    body = dict(model=model_name, prompt="Write a poem:", n=2, temperature=1.0, seed=1,
                max_tokens=12, stop=[" "], logprobs=0)
    full = complete(http, **body)
    lengths = [len(c["logprobs"]["tokens"]) for c in full["choices"]]
    assert lengths[0] != lengths[1], "precondition: the two samples finish at different steps"
    events = sse_events(http, "/v1/completions", {
        **body, "logprobs": None, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert _per_index_finishes(chunks) == {0: ["stop"], 1: ["stop"]}
    assert counts(chunks[-1]["usage"]) == counts(full["usage"])
