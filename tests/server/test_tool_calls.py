"""Tool calling through the openai SDK against a live `tessera serve` (default model, CPU;
the shared server runs with --enable-auto-tool-choice --tool-call-parser hermes): forced
calls always parse and match the function's schema, a full round trip (call -> tool
result -> answer) works streamed and not, streamed calls join to the non-streamed ones,
and what cannot be honoured is a 400 naming the field."""
from __future__ import annotations

import json

import jsonschema
import pytest

from tests.server.helpers import assert_error

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def _check_calls(message) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_always_yields_a_parseable_call(sdk, model_name):
    for parallel in (True, False):
        r = sdk.chat.completions.create(
            model=model_name, messages=ASK, tools=TOOLS, tool_choice="required", n=3,
            temperature=1.0, seed=5, max_tokens=120, parallel_tool_calls=parallel)
        for choice in r.choices:
            _check_calls(choice.message)  # the complete calls, also when cut by max_tokens
            if not parallel:  # exactly one call, then the end
                assert choice.finish_reason == "tool_calls"
                assert len(choice.message.tool_calls) == 1


def test_named_function_is_called(sdk, model_name):
    r = sdk.chat.completions.create(
        model=model_name, messages=ASK, tools=TOOLS, temperature=0, max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    message = r.choices[0].message
    _check_calls(message)
    assert [c.function.name for c in message.tool_calls] == ["get_time"]


def _streamed(sdk, **kwargs):
    """(content, {index: (id, name, arguments)}, finish_reason) of a streamed answer."""
    content, calls, finish = "", {}, None
    for chunk in sdk.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            call_id, name, args = calls.get(d.index, (None, None, ""))
            if d.id:
                assert call_id is None, "a call is announced once"
                call_id, name = d.id, d.function.name
            calls[d.index] = (call_id, name, args + (d.function.arguments or ""))
    return content, calls, finish


def test_streamed_calls_join_to_the_whole_answer(sdk, model_name):
    kwargs = dict(model=model_name, messages=ASK, tools=TOOLS, tool_choice="required",
                  temperature=0, max_tokens=150)
    whole = sdk.chat.completions.create(**kwargs).choices[0].message
    content, calls, finish = _streamed(sdk, **kwargs)
    assert finish == "tool_calls" and content == ""
    assert [(name, args) for _, name, args in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole.tool_calls]


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip(sdk, model_name, stream):
    kwargs = dict(model=model_name, tools=TOOLS, temperature=0, max_tokens=120)
    first = sdk.chat.completions.create(messages=ASK, tool_choice="required", **kwargs)
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    if not stream:
        answer = sdk.chat.completions.create(messages=history, tool_choice="auto",
                                                **kwargs).choices[0]
        message = answer.message
        assert message.content or message.tool_calls
        if message.tool_calls:  # the model may call again: the call must parse
            _check_calls(message)
        return
    content, calls, finish = _streamed(sdk, messages=history, tool_choice="auto", **kwargs)
    assert content or calls
    assert finish in ("stop", "length", "tool_calls")
    for _, name, args in calls.values():
        jsonschema.validate(json.loads(args), SCHEMAS[name])


def test_tool_choice_none_answers_in_text(sdk, model_name):
    r = sdk.chat.completions.create(model=model_name, messages=ASK, tools=TOOLS,
                                       tool_choice="none", temperature=0, max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


BAD = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "strin"}}}}}],
      "tool_choice": "required"}, "tools", "strin"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format", "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "same name"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type", None),
    ({"messages": [*ASK, {"role": "tool", "content": "21C"}]}, None, "tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
      "function": {"name": "f", "arguments": "not json"}}]}]}, None, "JSON object"),
]


@pytest.mark.parametrize("extra,param,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_tool_requests_are_400(api, extra, param, words):
    r = api.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, **extra})
    err = assert_error(r, 400, param)
    if words:
        assert words in err["message"], err
    assert api.post("/v1/chat/completions", json={"messages": ASK,
                                                   "max_tokens": 2}).status_code == 200
