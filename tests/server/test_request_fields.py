"""Every request field is implemented or refused, never ignored (issue 19): for each field
that OpenAI's API reference and vLLM's extra parameters document for /v1/completions and
/v1/chat/completions, a request that asks for its effect either succeeds (Tessera
implements it, or it is on the documented allow-list of fields without effect) or gets a
400 in the OpenAI shape naming that field. A few implemented ones are checked for their
effect here; the others have their own tests."""
from __future__ import annotations

import httpx
import pytest

from tests.server.helpers import assert_error

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# field -> a value that asks for the field's effect
OPENAI_COMPLETIONS = {
    "best_of": 2, "echo": True, "frequency_penalty": 0.5, "logit_bias": {"5": 10},
    "logprobs": 2, "max_tokens": 3, "n": 2, "presence_penalty": 0.5, "seed": 7,
    "stop": ["\n"], "stream": False, "stream_options": {"include_usage": True},
    "suffix": "tail", "temperature": 0.5, "top_p": 0.9, "user": "u-1",
}
OPENAI_CHAT = {
    "audio": {"voice": "alloy", "format": "wav"}, "frequency_penalty": 0.5,
    "function_call": {"name": "f"}, "functions": [TOOL["function"]], "logit_bias": {"5": 10},
    "logprobs": True, "max_completion_tokens": 3, "max_tokens": 3, "metadata": {"k": "v"},
    "modalities": ["text", "audio"], "n": 2, "parallel_tool_calls": True,
    "prediction": {"type": "content", "content": "x"}, "presence_penalty": 0.5,
    "prompt_cache_key": "k", "reasoning_effort": "low",
    "response_format": {"type": "json_object"}, "safety_identifier": "s", "seed": 7,
    "service_tier": "flex", "stop": ["\n"], "store": True, "stream": False,
    "stream_options": {"include_usage": True}, "temperature": 0.5, "tool_choice": "required",
    "tools": [TOOL], "top_logprobs": 2, "top_p": 0.9, "user": "u-1", "verbosity": "low",
    "web_search_options": {},
}
VLLM_EXTRAS = {
    "best_of": 2, "use_beam_search": True, "top_k": 5, "min_p": 0.1,
    "repetition_penalty": 1.1, "length_penalty": 0.5, "stop_token_ids": [2],
    "include_stop_str_in_output": True, "ignore_eos": True, "min_tokens": 1,
    "skip_special_tokens": False, "spaces_between_special_tokens": False,
    "truncate_prompt_tokens": 4, "prompt_logprobs": 1, "allowed_token_ids": [5, 6],
    "bad_words": ["Paris"], "add_special_tokens": True, "chat_template_kwargs": {"x": 1},
    "mm_processor_kwargs": {}, "guided_json": {"type": "object"}, "guided_regex": "a+",
    "guided_choice": ["a", "b"], "guided_grammar": "root ::= \"a\"", "structural_tag": "{}",
    "guided_decoding_backend": "xgrammar", "guided_whitespace_pattern": " ", "priority": 1,
    "request_id": "r-1", "logits_processors": ["m.P"], "return_tokens_as_token_ids": True,
    "cache_salt": "salt", "kv_transfer_params": {}, "vllm_xargs": {"a": 1},
    "return_token_ids": True, "response_format": {"type": "json_object"},
    "structured_outputs": {"choice": ["a", "b"]},
}
VLLM_CHAT_EXTRAS = {"echo": True, "add_generation_prompt": True,
                    "continue_final_message": False, "documents": [{"title": "t", "text": "x"}],
                    "chat_template": "{{ messages[0]['content'] }}"}
VLLM_COMPLETION_EXTRAS = {"prompt_embeds": "AAAA"}

STRUCTURED = {"response_format", "structured_outputs", "guided_json", "guided_regex",
              "guided_choice", "guided_grammar"}
IMPLEMENTED_COMPLETIONS = {
    "echo", "frequency_penalty", "logprobs", "max_tokens", "n", "presence_penalty", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "user", "top_k", "min_p",
    "repetition_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos",
    "min_tokens", "skip_special_tokens", "add_special_tokens", "return_token_ids",
    *STRUCTURED}
IMPLEMENTED_CHAT = {
    "frequency_penalty", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "n",
    "parallel_tool_calls", "presence_penalty", "prompt_cache_key", "safety_identifier",
    "seed", "stop", "stream", "stream_options", "temperature", "top_logprobs", "top_p",
    "user", "top_k", "min_p", "repetition_penalty", "stop_token_ids",
    "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "add_special_tokens", "chat_template_kwargs", "return_token_ids",
    "add_generation_prompt", "continue_final_message", "documents", "chat_template",
    "tools", *STRUCTURED}  # tool_choice "required" without tools: a 400 naming it


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


def _cases(path: str, fields: dict, implemented: set) -> list:
    return [(path, name, value, name in implemented) for name, value in fields.items()]


CASES = (_cases("/v1/completions", {**OPENAI_COMPLETIONS, **VLLM_EXTRAS,
                                    **VLLM_COMPLETION_EXTRAS}, IMPLEMENTED_COMPLETIONS)
         + _cases("/v1/chat/completions", {**OPENAI_CHAT, **VLLM_EXTRAS, **VLLM_CHAT_EXTRAS},
                  IMPLEMENTED_CHAT))


@pytest.mark.parametrize("path,field,value,implemented", CASES,
                         ids=[f"{c[0].split('/')[-1]}-{c[1]}" for c in CASES])
def test_a_field_is_honoured_or_refused(http, path, field, value, implemented):
    body = {"prompt": "The capital of France is"} if "chat" not in path else {"messages": CHAT}
    body = {"max_tokens": 3, **body, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    r = http.post(path, json=body)
    if not implemented:
        err = assert_error(r, 400, field)
        assert field in err["message"]
        return
    assert r.status_code == 200, (field, r.text)
    choices = r.json()["choices"]
    assert choices and all(c["finish_reason"] in ("stop", "length") for c in choices)


def test_values_that_ask_for_nothing_pass(http):
    """The refused fields' neutral values (an empty tool list, text output, n = best_of)
    ask for nothing Tessera lacks: accepted, as clients send them by default."""
    chat = {"messages": CHAT, "max_tokens": 3, "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}, "best_of": 1, "use_beam_search": False,
            "priority": 0, "store": False, "service_tier": "auto", "modalities": ["text"],
            "logit_bias": {}, "echo": False}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    completion = {"prompt": "Hi", "max_tokens": 3, "best_of": 2, "n": 2, "suffix": ""}
    assert http.post("/v1/completions", json=completion).status_code == 200


def test_chat_extras_take_effect(http):
    """continue_final_message continues the last (assistant) message; add_special_tokens
    adds what the tokenizer adds; documents reach the template."""
    start = [*CHAT, {"role": "assistant", "content": "The capital of France is"}]
    r = http.post("/v1/chat/completions", json={
        "messages": start, "max_tokens": 4, "temperature": 0, "add_generation_prompt": False,
        "continue_final_message": True})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip().startswith("Paris")
    both = http.post("/v1/chat/completions", json={"messages": start, "max_tokens": 2,
                                                   "continue_final_message": True})
    assert_error(both, 400, "continue_final_message")
    template = "{% for d in documents %}{{ d.text }}{% endfor %}|{{ messages[0]['content'] }}"
    with_docs = http.post("/tokenize", json={"prompt": "x|hi", "add_special_tokens": False})
    r = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "chat_template":
        template, "documents": [{"title": "t", "text": "x"}], "return_token_ids": True})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_token_ids"] == with_docs.json()["tokens"]


def test_tool_calls_in_the_history_pass_and_so_do_null_fields(http):
    past = {"role": "assistant", "content": "Paris.", "refusal": None, "tool_calls": None,
            "function_call": None, "audio": None, "annotations": []}
    ok = http.post("/v1/chat/completions", json={"messages": [*CHAT, past, *CHAT],
                                                 "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    called = {**past, "tool_calls": [{"id": "c", "type": "function",
                                      "function": {"name": "f", "arguments": "{}"}}]}
    result = {"role": "tool", "tool_call_id": "c", "content": "42"}
    r = http.post("/v1/chat/completions", json={"messages": [*CHAT, called, result],
                                                "max_tokens": 2})
    assert r.status_code == 200, r.text
    audio = {**past, "audio": {"id": "a"}}
    r = http.post("/v1/chat/completions", json={"messages": [*CHAT, audio], "max_tokens": 2})
    assert "audio" in assert_error(r, 400)["message"]
    r = http.post("/v1/chat/completions", json={"messages": [{**CHAT[0], "mood": "x"}]})
    assert_error(r, 400, "messages.0.mood")


def test_kserve_refuses_unknown_parameters(http, model_name):
    r = http.post(f"/v2/models/{model_name}/generate",
                  json={"text_input": "Hi", "parameters": {"max_tokens": 2, "beam_width": 4}})
    assert_error(r, 400, "beam_width")
    r = http.post(f"/v2/models/{model_name}/generate", json={"text_input": "Hi", "top_n": 2})
    assert_error(r, 400, "top_n")
    r = http.post(f"/v2/models/{model_name}/infer", json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["Hi"]}],
        "priority": 3})
    assert_error(r, 400, "priority")
    r = http.post(f"/v2/models/{model_name}/generate",
                  json={"text_input": "Hi", "parameters": {"max_tokens": 2}})
    assert r.status_code == 200, r.text
