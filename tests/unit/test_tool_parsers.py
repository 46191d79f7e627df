"""Tool-call parsers (server/tool_parsers.py): whole texts in each format, texts that are
not calls, and streaming: at every split point the streamed pieces join to exactly the
content and arguments the whole text gives, each call announced once."""
from __future__ import annotations

import json

import pytest

from tessera.server.tool_parsers import (HermesParser, Llama3JsonParser, NamedParser,
                                         RequiredParser, ToolStream, tool_calls_of)

HERMES = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris",'
          ' "name": "x", "deep": {"a": [1, "}"]}}}\n</tool_call>\n<tool_call>{"arguments": '
          '{"q": 1}, "name": "second"}</tool_call>')
LLAMA = '<|python_tag|>{"name": "f", "parameters": {"q": "a;b"}}; {"name": "g", "parameters": {}}'
REQUIRED = '[{"name":"f","parameters":{"x":[1,2]}},{"name":"g","parameters":{"s":"]"}}]'


def _whole(parser, text):
    content, calls = parser.parse(text, True)
    return content, [(c.name, c.arguments) for c in calls if c.done]


def test_hermes_reads_content_and_calls():
    content, calls = _whole(HermesParser(), HERMES)
    assert content == "Let me check.\n"
    assert calls == [("get_weather", '{"city": "Paris", "name": "x", "deep": {"a": [1, "}"]}}'),
                     ("second", '{"q": 1}')]


def test_llama3_json_and_required_and_named():
    assert _whole(Llama3JsonParser(), LLAMA) == ("", [("f", '{"q": "a;b"}'), ("g", "{}")])
    assert _whole(RequiredParser(), REQUIRED) == ("", [("f", '{"x":[1,2]}'), ("g", '{"s":"]"}')])
    assert _whole(NamedParser("h"), '{"a": 1}') == ("", [("h", '{"a": 1}')])


@pytest.mark.parametrize("parser,text", [
    (HermesParser(), "Just text, no calls."),
    (HermesParser(), "Broken <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": </tool_call>"),
    (Llama3JsonParser(), "The answer is 4."),
    (Llama3JsonParser(), '{"not": "a call"}'),
])
def test_text_that_is_not_a_call_is_content(parser, text):
    assert parser.parse(text, True) == (text, [])


def test_tool_calls_of_keeps_one_unless_parallel():
    _, calls = HermesParser().parse(HERMES, True)
    assert len(tool_calls_of(calls, True)) == 2
    only = tool_calls_of(calls, False)
    assert [c["function"]["name"] for c in only] == ["get_weather"]
    assert json.loads(only[0]["function"]["arguments"])["city"] == "Paris"


@pytest.mark.parametrize("make,text", [(HermesParser, HERMES), (Llama3JsonParser, LLAMA),
                                       (RequiredParser, REQUIRED),
                                       (lambda: NamedParser("h"), '{"a": {"b": [1, 2]}}')])
@pytest.mark.parametrize("step", [1, 2, 7])
def test_streamed_pieces_join_to_the_whole(make, text, step):
    stream = ToolStream(make(), parallel=True)
    content, args, names = "", {}, {}
    cuts = list(range(step, len(text), step)) + [len(text)]
    for cut in cuts:
        new, deltas = stream.delta(text[:cut], cut == len(text))
        content += new
        for d in deltas:
            if "id" in d:
                assert d["index"] not in names, "announced once"
                names[d["index"]] = d["function"]["name"]
            args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
    whole_content, whole_calls = _whole(make(), text)
    assert content == whole_content
    assert [(names[i], args[i]) for i in sorted(names)] == whole_calls
