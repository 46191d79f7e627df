"""Structured outputs through the OpenAI API (issue 22), against a live `tessera serve`
(default model, CPU): the openai SDK's `parse` with a pydantic model, JSON mode, JSON
schemas (also streamed), vLLM's regex / choice / grammar fields, and a 400 naming the
problem for every grammar that cannot be used, with the server unaffected."""
from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import pydantic
import pytest

from tests.server.helpers import assert_error, wait_until_idle

ASK = [{"role": "user", "content": "Give me a person's name and age."}]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["name", "age"], "additionalProperties": False}


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=24)
    age: int = pydantic.Field(ge=0, le=120)
    kind: Literal["friend", "colleague"]


def test_sdk_parse_returns_the_pydantic_object(sdk, model_name):
    r = sdk.beta.chat.completions.parse(model=model_name, messages=ASK, temperature=0,
                                           max_tokens=80, response_format=Person)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person)
    assert 0 <= person.age <= 120 and person.kind in ("friend", "colleague")
    assert r.choices[0].finish_reason == "stop"


def test_json_schema_sampled_and_streamed(sdk, model_name):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                  "strict": True}}
    r = sdk.chat.completions.create(model=model_name, messages=ASK, max_tokens=120,
                                       temperature=1.0, seed=3, n=3, response_format=fmt)
    for choice in r.choices:
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    chunks = sdk.chat.completions.create(model=model_name, messages=ASK, max_tokens=120,
                                            temperature=0, response_format=fmt, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_on_completions(sdk, model_name):
    r = sdk.completions.create(model=model_name, prompt="A JSON object with a cat's name and age:",
                                  max_tokens=100, temperature=0,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.choices[0].text), dict)


@pytest.mark.parametrize("extra,check", [
    ({"guided_regex": r"[A-Z][a-z]{2,8} \d{2}"},
     lambda t: re.fullmatch(r"[A-Z][a-z]{2,8} \d{2}", t)),
    ({"guided_choice": ["Paris", "London", "Rome"]}, lambda t: t in ("Paris", "London", "Rome")),
    ({"guided_grammar": 'root ::= ("yes" | "no") "!"'}, lambda t: t in ("yes!", "no!")),
    ({"guided_json": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                      "maxItems": 4}},
     lambda t: 2 <= len(json.loads(t)) <= 4),
    ({"structured_outputs": {"regex": "(cat|dog)s?"}}, lambda t: re.fullmatch("(cat|dog)s?", t)),
])
def test_vllm_fields(sdk, model_name, extra, check):
    r = sdk.chat.completions.create(model=model_name, messages=ASK, max_tokens=40,
                                       temperature=0.7, seed=1, extra_body=extra)
    text = r.choices[0].message.content
    assert check(text), text
    assert r.choices[0].finish_reason == "stop"


def test_kserve_generate_takes_structured_outputs(api, model_name):
    r = api.post(f"/v2/models/{model_name}/generate", json={
        "text_input": "Is the sky blue?", "parameters": {
            "max_tokens": 10, "structured_outputs": {"choice": ["yes", "no"]}}})
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] in ("yes", "no")


BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": 5}}}}, "response_format", "type must be a string"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "uniqueItems": True}}}}, "response_format", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format", "json_schema.schema"),
    ({"response_format": {"type": "structural_tag"}}, "response_format.type", None),
    ({"guided_regex": "[a-"}, "guided_regex", "unclosed character class"),
    ({"guided_grammar": "start: nothing_defined"}, "guided_grammar", "nothing_defined"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_choice": []}, "guided_choice", "choice"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_regex", "give one"),
    ({"structured_outputs": {"regex": "a", "bogus": 1}}, "structured_outputs", "bogus"),
    ({"guided_regex": "a+", "min_tokens": 2}, "min_tokens", "structured outputs"),
]


@pytest.mark.parametrize("extra,param,words", BAD, ids=[b[1] + str(i) for i, b in
                                                        enumerate(BAD)])
def test_bad_grammars_are_400_naming_the_problem(api, server, extra, param, words):
    r = api.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, **extra})
    err = assert_error(r, 400, param)
    if words:
        assert words in err["message"], err
    ok = api.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 3})
    assert ok.status_code == 200


def test_structured_requests_leave_no_blocks_behind(server):
    assert wait_until_idle(server.base_url, 60)
