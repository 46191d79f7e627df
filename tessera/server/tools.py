"""Tool calling on /v1/chat/completions: what a request's `tools` and `tool_choice` ask
for, how the tools reach the model, and how its calls are read back.

Objects: ToolFunction, Tool, NamedToolChoice (request shapes), ToolOptions (the server's
`--enable-auto-tool-choice` and `--tool-call-parser`), ToolPlan and `plan_tools(body,
options)` (a 400 naming the field for what cannot be honoured), `tool_conversation(...)`
(the messages and template arguments the chat template gets).
Modes, as OpenAI and vLLM define them:
- none: the tools are not shown; the model answers in text;
- auto (the default with tools): the tools are shown, the model answers or calls, and
  `--tool-call-parser` (tool_parsers.py: hermes, llama3_json) reads its calls; it needs
  `--enable-auto-tool-choice`, as in vLLM;
- required: a grammar makes the model write a JSON array of {"name", "parameters"} calls
  (exactly one when parallel_tool_calls is false), so the calls always parse;
- a named function: a grammar makes it write that function's arguments.
The chat template gets `tools` and the history's calls (arguments as objects, as Hugging
Face templates expect). A template that ignores tools (it renders the same text with and
without them: found once per template) gets them as text instead, Hermes-style: a system
message listing them and saying how to call, past calls as `<tool_call>` blocks, tool
results as `<tool_response>` blocks in user turns; auto mode then reads `hermes`.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from tessera.server.errors import ApiError
from tessera.server.tool_parsers import PARSERS
from tessera.structured.params import StructuredOutputsParams


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema (none: any object)
    strict: Optional[bool] = None  # the arguments always match when a grammar forces them


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ToolFunction


class _FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: _FunctionName


@dataclasses.dataclass
class ToolOptions:
    enable_auto_tool_choice: bool = False
    tool_call_parser: Optional[str] = None  # one of tool_parsers.PARSERS


@dataclasses.dataclass
class ToolPlan:
    mode: str  # none | auto | required | named
    tools: list[dict[str, Any]]  # OpenAI's tool objects
    named: Optional[str] = None
    parallel: bool = True
    parser: Optional[str] = None  # auto: the parser's name

    @property
    def calls(self) -> bool:
        """Whether the answer may hold tool calls (and is parsed for them)."""
        return self.mode != "none"

    def grammar(self) -> Optional[StructuredOutputsParams]:
        """The grammar that forces the call(s): required and named modes."""
        if self.mode == "named":
            return StructuredOutputsParams(json=_parameters(self._function(self.named)))
        if self.mode != "required":
            return None
        one_of = [{"type": "object", "properties": {
            "name": {"const": t["function"]["name"]},
            "parameters": _parameters(t["function"])},
            "required": ["name", "parameters"], "additionalProperties": False}
            for t in self.tools]
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutputsParams(json=schema)

    def _function(self, name: str) -> dict[str, Any]:
        return next(t["function"] for t in self.tools if t["function"]["name"] == name)


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    return function.get("parameters") or {"type": "object"}


def plan_tools(body, options: ToolOptions) -> ToolPlan:
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice
    parallel = body.parallel_tool_calls is not False
    if choice is None:
        choice = "auto" if tools else "none"
    if choice != "none" and not tools:
        raise ApiError(400, f"tool_choice {_show(choice)} needs tools.", "tool_choice")
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools: two functions have the same name.", "tools")
    if choice != "none" and body.structured_field() is not None:
        raise ApiError(400, f"{body.structured_field()} cannot be combined with tools (the "
                       "tool calls have their own format); use tool_choice 'none'.",
                       body.structured_field())
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in names:
            raise ApiError(400, f"tool_choice names the function {name!r}, which is not in "
                           f"tools ({', '.join(names)}).", "tool_choice")
        return ToolPlan("named", tools, name, parallel)
    if choice == "auto":
        if not options.enable_auto_tool_choice or options.tool_call_parser is None:
            raise ApiError(400, "tool_choice 'auto' needs the server started with "
                           "--enable-auto-tool-choice and --tool-call-parser (one of "
                           f"{', '.join(PARSERS)}); 'required', 'none' or a named function "
                           "work without.", "tool_choice")
        return ToolPlan("auto", tools, None, parallel, options.tool_call_parser)
    return ToolPlan(choice, tools, None, parallel)


def _show(choice: Any) -> str:
    return repr(choice) if isinstance(choice, str) else repr(choice.function.name)


# -- how the conversation reaches the template --------------------------------------------
_support: dict[str, tuple[bool, bool]] = {}  # template text -> template_support()
_support_lock = threading.Lock()
_PROBE_TOOL = {"type": "function", "function": {"name": "tessera_probe_tool",
                                                "parameters": {"type": "object"}}}
_PROBE_CALL = {"id": "call_probe", "type": "function",
               "function": {"name": "tessera_probe_call", "arguments": {}}}


def template_support(front, chat_template: Optional[str]) -> tuple[bool, bool]:
    """(renders tools, renders past tool calls) for this template (cached)."""
    key = chat_template or front.tokenizer.chat_template  # the template's own text
    with _support_lock:
        if key in _support:
            return _support[key]
    user = [{"role": "user", "content": "hi"}]
    tools = "tessera_probe_tool" in front.chat_text(user, True, chat_template,
                                                     tools=[_PROBE_TOOL])
    try:
        calls = "tessera_probe_call" in front.chat_text(
            [*user, {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}],
            False, chat_template)
    except ValueError:
        calls = False
    with _support_lock:
        _support[key] = (tools, calls)
    return tools, calls


def tool_conversation(front, messages: list[dict[str, Any]], plan: ToolPlan,
                      chat_template: Optional[str]) -> tuple[list[dict[str, Any]], dict]:
    """(messages, extra template arguments) with the tools and the history's calls in the
    form the template renders."""
    has_calls = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not plan.calls and not has_calls:
        return messages, {}
    renders_tools, renders_calls = template_support(front, chat_template)
    if not renders_calls:
        messages = [_as_text(m) for m in messages]
    if not plan.calls:
        return messages, {}
    if renders_tools:
        return messages, {"tools": plan.tools}
    if plan.mode == "auto":
        plan.parser = "hermes"  # the format the tools message asks for
    return _with_tools_message(messages, plan.tools), {}


def _as_text(m: dict[str, Any]) -> dict[str, Any]:
    if m.get("tool_calls"):
        blocks = "\n".join("<tool_call>\n" + json.dumps(
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
            ensure_ascii=False) + "\n</tool_call>" for c in m["tool_calls"])
        text = (m.get("content") or "") + ("\n" if m.get("content") else "") + blocks
        return {"role": "assistant", "content": text}
    if m["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
    return m


def _with_tools_message(messages: list[dict[str, Any]], tools: list[dict]) -> list[dict]:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    text = ("You can call functions to help with the user's request. The functions are "
            f"listed in <tools></tools> tags:\n<tools>\n{listing}\n</tools>\n\nTo call one, "
            "write a JSON object with its name and arguments in <tool_call></tool_call> "
            "tags:\n<tool_call>\n{\"name\": <function name>, \"arguments\": <arguments "
            "object>}\n</tool_call>")
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{text}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
