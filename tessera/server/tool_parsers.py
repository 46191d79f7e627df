"""Tool calls read back from a model's text, whole or as it streams.

Objects: ParsedCall (a call's name, once complete, and its arguments' JSON text so far),
the parsers (each `parse(text, final) -> (content, calls)`), PARSERS (the names
`--tool-call-parser` takes, as vLLM names them), `parser_for(mode, ...)`, and ToolStream
(one choice's stream: what to send since the last chunk). Formats:
- `hermes` (Hermes, Qwen2.5, and Tessera's fallback for templates that ignore tools):
  content, then `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks;
- `llama3_json` (Llama 3.1/3.2): the output is `{"name": ..., "parameters": {...}}`
  (after an optional `<|python_tag|>`), several separated by `;`;
- forced calls (tool_choice `required`: a JSON array of {"name", "parameters"};
  a named function: the arguments object itself), which a grammar makes the model write.
Streaming works on prefixes: while a call's arguments object is still open, every
character so far belongs to it, so the arguments are sent as they grow and the pieces
join to exactly the final text; a call is announced (id, name) once its name is complete.
Content that may be the start of a `<tool_call>` tag is held back until it is not. An
auto-mode text whose calls do not parse at the end is all content (as vLLM does).
"""
from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any, Optional

_DECODER = json.JSONDecoder()
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')
PARSERS = ("hermes", "llama3_json")


@dataclasses.dataclass
class ParsedCall:
    name: Optional[str]  # None until the name's string is complete
    arguments: str  # the arguments object's JSON text so far
    done: bool  # the arguments object is complete


def _call_from_body(body: str) -> ParsedCall:
    """A call object's text (complete or a prefix) -> its name and arguments so far (the
    name is looked for outside the arguments: they may have a "name" of their own)."""
    args_match = _ARGS.search(body)
    head = body if args_match is None else body[:args_match.start()]
    name_match = _NAME.search(head)
    if args_match is None:
        return ParsedCall(_name(name_match), "", False)
    rest = body[args_match.end():]
    try:
        _, end = _DECODER.raw_decode(rest)
    except ValueError:
        return ParsedCall(_name(name_match), rest, False)
    name_match = name_match or _NAME.search(rest[end:])
    return ParsedCall(_name(name_match), rest[:end], True)


def _name(match: Optional[re.Match]) -> Optional[str]:
    return json.loads(f'"{match.group(1)}"') if match else None


def _call_objects(text: str, pos: int, separators: str) -> list[ParsedCall]:
    """The call objects from text[pos:], separated by any of separators; the last may be
    a prefix. Stops at anything else (the array's `]`)."""
    calls = []
    while True:
        while pos < len(text) and text[pos] in separators:
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            return calls
        try:
            _, end = _DECODER.raw_decode(text, pos)
        except ValueError:
            calls.append(_call_from_body(text[pos:]))
            return calls
        calls.append(_call_from_body(text[pos:end]))
        pos = end


def _valid(calls: list[ParsedCall]) -> bool:
    return bool(calls) and all(c.name and c.done and _is_object(c.arguments) for c in calls)


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _held_back(text: str, tag: str) -> str:
    """text without a tail that could be the start of tag."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return text[:-k]
    return text


class HermesParser:
    open_tag, close_tag = "<tool_call>", "</tool_call>"

    def parse(self, text: str, final: bool) -> tuple[str, list[ParsedCall]]:
        start = text.find(self.open_tag)
        if start < 0:
            return (text if final else _held_back(text, self.open_tag)), []
        calls = []
        for block in text[start:].split(self.open_tag)[1:]:
            calls.append(_call_from_body(block.split(self.close_tag)[0]))
        content = text[:start]
        if final and not _valid(calls):
            return text, []
        return content, calls


class Llama3JsonParser:
    marker = "<|python_tag|>"

    def parse(self, text: str, final: bool) -> tuple[str, list[ParsedCall]]:
        body = text.strip()
        if body.startswith(self.marker):
            body = body[len(self.marker):].lstrip()
        if not body.startswith("{"):
            if not final and (not body or self.marker.startswith(body)):
                return "", []  # undecided: could still become a call
            return text, []
        calls = _call_objects(body, 0, " \t\n\r;")
        if final and not _valid(calls):
            return text, []
        return "", calls


class RequiredParser:
    """tool_choice required: the grammar's JSON array of {"name", "parameters"} objects."""

    def parse(self, text: str, final: bool) -> tuple[str, list[ParsedCall]]:
        start = text.find("[")
        calls = _call_objects(text, start + 1, " \t\n\r,") if start >= 0 else []
        return "", calls


class NamedParser:
    """tool_choice naming a function: the grammar's arguments object is the whole text."""

    def __init__(self, name: str):
        self.name = name

    def parse(self, text: str, final: bool) -> tuple[str, list[ParsedCall]]:
        try:
            _, end = _DECODER.raw_decode(text)
            return "", [ParsedCall(self.name, text[:end], True)]
        except ValueError:
            return "", [ParsedCall(self.name, text, False)]


def parser_for(mode: str, parser_name: Optional[str], named: Optional[str] = None):
    if mode == "required":
        return RequiredParser()
    if mode == "named":
        return NamedParser(named)
    return {"hermes": HermesParser, "llama3_json": Llama3JsonParser}[parser_name]()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_calls_of(calls: list[ParsedCall], parallel: bool) -> list[dict[str, Any]]:
    """OpenAI's message.tool_calls for complete calls (only the first unless parallel)."""
    calls = [c for c in calls if c.name and c.done][:None if parallel else 1]
    return [{"id": new_call_id(), "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


class ToolStream:
    """One choice's streamed tool calls: `delta(text, final)` with the text released so
    far -> (new content, tool_calls deltas as OpenAI streams them)."""

    def __init__(self, parser, parallel: bool):
        self.parser, self.parallel = parser, parallel
        self.sent_content = 0
        self.sent_args: list[int] = []
        self.ids: list[str] = []

    def delta(self, text: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        content, calls = self.parser.parse(text, final)
        if self.ids and not calls:  # calls already announced: their text is not content
            content = content[:self.sent_content]
        new_content = content[self.sent_content:]
        self.sent_content = max(self.sent_content, len(content))
        deltas = []
        for i, call in enumerate(calls[:None if self.parallel else 1]):
            if call.name is None:
                break  # announced in order, once the name is known
            if i == len(self.ids):
                self.ids.append(new_call_id())
                self.sent_args.append(0)
                deltas.append({"index": i, "id": self.ids[i], "type": "function",
                               "function": {"name": call.name, "arguments": ""}})
            new = call.arguments[self.sent_args[i]:]
            if new:
                self.sent_args[i] = len(call.arguments)
                deltas.append({"index": i, "function": {"arguments": new}})
        return new_content, deltas

    @property
    def called(self) -> bool:
        return bool(self.ids)
