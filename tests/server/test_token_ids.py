"""Token ids in answers (`return_token_ids`), a server without a tokenizer, and the
serving benchmark (`tessera bench serve`) against live servers.

With the shared server (SmolLM2, its tokenizer): token ids match the text and the
streamed chunks add up to the non-streamed answer; the default answer shape is unchanged.
With a random-weights server of SmolLM2's shape (no tokenizer): token-id prompts are
answered with token ids, streamed chunk by chunk; what needs a tokenizer (echo,
logprobs, stop strings, text prompts, chat, /tokenize) is refused with a 400 that says
so, and the server stays up; and `tessera bench serve` runs its workload against it and
reports every request.
"""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.helpers.launch import start_server
from tests.server.helpers import assert_error, sse_events, wait_until_idle

TIMEOUT = httpx.Timeout(300.0, connect=10.0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A server of random weights and no tokenizer."""
    srv = start_server(str(tmp_path_factory.mktemp("bare")), "smollm2-135m", "--load-format",
                       "dummy", "--num-blocks", "256", "--max-model-len", "512")
    with httpx.Client(base_url=srv.base_url, timeout=TIMEOUT) as client:
        yield srv, client
    srv.stop()


def test_completion_token_ids_match_the_text(http, model_name):
    prompt = "The capital of France is"
    r = http.post("/v1/completions", json=dict(model=model_name, prompt=prompt, max_tokens=6,
                                                temperature=0, return_token_ids=True)).json()
    choice = r["choices"][0]
    assert len(choice["token_ids"]) == r["usage"]["completion_tokens"] == 6
    assert choice["prompt_token_ids"] == http.post("/tokenize", json=dict(
        model=model_name, prompt=prompt)).json()["tokens"]
    assert http.post("/detokenize", json=dict(model=model_name, tokens=choice["token_ids"])
                     ).json()["prompt"] == choice["text"]
    plain = http.post("/v1/completions", json=dict(model=model_name, prompt=prompt, max_tokens=6,
                                                   temperature=0)).json()["choices"][0]
    assert "token_ids" not in plain and plain["text"] == choice["text"]


def test_streamed_token_ids_add_up_to_the_answer(http, model_name):
    body = dict(model=model_name, prompt="Once upon a time", max_tokens=10, temperature=0,
                return_token_ids=True)
    full = http.post("/v1/completions", json=body).json()["choices"][0]["token_ids"]
    chunks = sse_events(http, "/v1/completions", {**body, "stream": True})[:-1]
    assert all(c["choices"][0]["token_ids"] for c in chunks)  # each chunk brings tokens
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == full
    prompt_ids = [c["choices"][0].get("prompt_token_ids") for c in chunks]
    assert prompt_ids[0] and not any(prompt_ids[1:])  # the prompt's ids come once
    chat = sse_events(http, "/v1/chat/completions", dict(
        model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        temperature=0, return_token_ids=True, stream=True,
        stream_options={"include_usage": True}))[:-1]
    ids = [t for c in chat if c["choices"] for t in c["choices"][0].get("token_ids", [])]
    assert len(ids) == chat[-1]["usage"]["completion_tokens"] > 0
    assert chat[0]["choices"][0]["prompt_token_ids"] == http.post("/tokenize", json=dict(
        model=model_name, messages=[{"role": "user", "content": "Hi"}])).json()["tokens"]


def test_a_server_without_tokenizer_answers_in_token_ids(bare):
    _, http = bare
    card = http.get("/v1/models").json()["data"][0]
    assert card["vocab_size"] == 49152
    body = dict(prompt=[5, 17, 99, 3], max_tokens=5, ignore_eos=True)
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "" and len(choice["token_ids"]) == 5
    assert choice["prompt_token_ids"] == [5, 17, 99, 3]
    assert all(0 <= t < 49152 for t in choice["token_ids"])
    chunks = sse_events(http, "/v1/completions", {**body, "temperature": 0, "stream": True})
    assert all(c["choices"][0]["token_ids"] for c in chunks[:-1])  # no empty chunks
    assert len([t for c in chunks[:-1] for t in c["choices"][0]["token_ids"]]) == 5


@pytest.mark.parametrize("body,param,contains", [
    (dict(prompt=[5, 6], echo=True), "echo", "tokenizer"),
    (dict(prompt=[5, 6], logprobs=2), "logprobs", "tokenizer"),
    (dict(prompt=[5, 6], stop=["x"]), "stop", "tokenizer"),
    (dict(prompt="some text"), None, "token ids"),
])
def test_what_needs_a_tokenizer_is_refused_with_400(bare, body, param, contains):
    _, http = bare
    err = assert_error(http.post("/v1/completions", json={**body, "max_tokens": 2}), 400, param,
                       contains)
    assert err["param"] == param  # None too: not a word picked from the message
    r = http.post("/v1/chat/completions", json=dict(messages=[{"role": "user", "content": "x"}]))
    assert assert_error(r, 400, contains="no tokenizer")["param"] is None
    assert_error(http.post("/tokenize", json=dict(prompt="x")), 400, "prompt", "no tokenizer")
    assert http.get("/health").status_code == 200


def test_bench_serve_reports_every_request(bare, tmp_path):
    srv, _ = bare
    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, "-m", "tessera.cli", "bench", "serve", "--base-url",
                           srv.base_url, "--num-prompts", "6", "--request-rate", "50",
                           "--input-range", "8", "24", "--output-range", "3", "6",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TTFT" in proc.stdout and "goodput" in proc.stdout
    r = json.loads(out.read_text())
    assert (r["completed"], r["failed"], r["short_outputs"]) == (6, 0, 0)
    assert 18 <= r["output_tokens"] <= 36 and 48 <= r["input_tokens"] <= 144
    assert 0 < r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"]
    assert r["tpot_ms"]["mean"] > 0 and r["request_rate"] == 50.0
    assert wait_until_idle(srv.base_url, 30)  # every KV block back after the run
