"""OpenAI request bodies (pydantic), what each field does here, and their SamplingParams.

Every field a request may carry is one of three kinds; nothing is silently ignored:
- implemented: the OpenAI fields Tessera honours, and the extra sampling fields users send
  through the SDK's `extra_body` (top_k, min_p, repetition_penalty, min_tokens, ignore_eos,
  stop_token_ids, ..., `return_token_ids`: each choice, and each streamed chunk, also
  carries its new token ids, the prompt's once), and vLLM's chat extras
  (add_special_tokens, continue_final_message, documents, chat_template[_kwargs]);
  structured outputs (STRUCTURED_FIELDS, one per request): OpenAI's `response_format`
  (text, json_object, json_schema), vLLM's `structured_outputs` ({json | json_object |
  regex | choice | grammar}) and its older `guided_json`, `guided_regex`,
  `guided_choice`, `guided_grammar`;
- accepted without effect, the allow-list NO_EFFECT (`user`, `metadata`,
  `safety_identifier`, `prompt_cache_key`: identifiers and hints whose absence of effect
  changes no answer; a json_schema's `name`, `description` and `strict`: the schema is
  always enforced);
- refused with a 400 naming the field: any other field (pydantic `extra="forbid"`), and
  the fields in UNSUPPORTED (and CHAT_UNSUPPORTED) when they ask for what Tessera lacks
  (`tools` and tool choices, `best_of` above n, beam search, priorities, audio, ...;
  `check_supported()`).
`sampling_params` validates values through SamplingParams (ValueError naming the field ->
HTTP 400).
"""
from __future__ import annotations

import dataclasses
import json

from typing import Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tessera.sampling_params import SamplingParams
from tessera.server.tools import NamedToolChoice, Tool
from tessera.structured.params import StructuredOutputsParams

MAX_N = 16  # samples per request
NO_EFFECT = ("user", "metadata", "safety_identifier", "prompt_cache_key")


def _none_or(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or v in allowed


def _empty(v: Any) -> bool:
    return not v


def _absent(v: Any) -> bool:  # any value at all asks for it (an empty object too)
    return v is None


# field -> (does this value ask for nothing Tessera lacks?, what is not implemented)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "functions": (_empty, "function calling"),
    "function_call": (_none_or("none", "auto"), "function calling"),
    "logit_bias": (_empty, "logit_bias"),
    "suffix": (_empty, "suffix (fill in the middle)"),
    "use_beam_search": (_none_or(False), "beam search"),
    "priority": (_none_or(0), "request priorities"),
    "audio": (_absent, "audio output"),
    "modalities": (lambda v: v is None or list(v) == ["text"], "modalities other than text"),
    "prediction": (_absent, "predicted outputs"),
    "reasoning_effort": (_absent, "reasoning effort"),
    "store": (_none_or(False), "stored completions"),
    "service_tier": (_none_or("auto", "default"), "service tiers"),
    "web_search_options": (_absent, "web search"),
    "verbosity": (_absent, "verbosity"),
}
CHAT_UNSUPPORTED = {"echo": (_none_or(False), "echo of the last message in chat")}


class JsonSchemaFormat(BaseModel):
    """response_format's json_schema: the schema is enforced whatever `strict` says."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Optional[str] = None  # a label: no effect
    description: Optional[str] = None  # no effect
    schema_: Optional[Union[dict[str, Any], bool]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


# the fields that ask for structured outputs (one per request)
STRUCTURED_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex",
                     "guided_choice", "guided_grammar")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refused: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = UNSUPPORTED

    def check_supported(self) -> Optional[tuple[str, str]]:
        """(field, what is not implemented) of the first field that asks for it, or None."""
        for field, (fine, what) in self.refused.items():
            if field in type(self).model_fields and not fine(getattr(self, field)):
                return field, what
        best_of = getattr(self, "best_of", None)
        if best_of is not None and best_of != getattr(self, "n", 1):
            return "best_of", "best_of other than n"
        return None


class _SamplingFields(_Request):
    model: Optional[str] = None
    n: int = 1
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: Optional[float] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    return_token_ids: bool = False
    # structured outputs (STRUCTURED_FIELDS): OpenAI's, vLLM's current and legacy names
    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Optional[Union[str, dict[str, Any]]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    # accepted without effect (NO_EFFECT)
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None  # prefix caching is automatic
    # refused unless they ask for nothing (UNSUPPORTED)
    logit_bias: Optional[dict[str, float]] = None
    best_of: Optional[int] = None
    use_beam_search: Optional[bool] = None
    priority: Optional[int] = None
    service_tier: Optional[str] = None
    store: Optional[bool] = None

    def sampling_params(self, defaults: dict[str, Any], max_tokens: Optional[int],
                        logprobs: Optional[int], prompt_logprobs: Optional[int]) -> SamplingParams:
        if self.n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N}, got {self.n}.")
        fields = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                      min_p=self.min_p, repetition_penalty=self.repetition_penalty)
        chosen = {k: v for k, v in fields.items() if v is not None}
        return SamplingParams(
            **{**defaults, **chosen}, n=self.n, seed=self.seed,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            max_tokens=max_tokens, min_tokens=self.min_tokens, stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            structured_outputs=self.structured_outputs_params())

    def structured_field(self) -> Optional[str]:
        """The field that asks for structured outputs (ValueError if several do)."""
        asked = [f for f in STRUCTURED_FIELDS if getattr(self, f) is not None]
        if self.response_format is not None and self.response_format.type == "text":
            asked.remove("response_format")
        if len(asked) > 1:
            raise ValueError(f"{asked[0]} and {asked[1]} both ask for structured outputs; "
                             "give one.")
        return asked[0] if asked else None

    def structured_outputs_params(self) -> Optional[StructuredOutputsParams]:
        field = self.structured_field()
        if field is None:
            return None
        try:
            if field == "response_format":
                return _from_response_format(self.response_format)
            if field == "structured_outputs":
                return StructuredOutputsParams.of(self.structured_outputs)
            kind = field.removeprefix("guided_")
            return StructuredOutputsParams(**{kind: getattr(self, field)})
        except ValueError as e:
            raise ValueError(f"{field} is invalid: "
                             f"{str(e).removeprefix('structured outputs: ')}") from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _from_response_format(rf: ResponseFormat) -> StructuredOutputsParams:
    if rf.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise ValueError("a json_schema response format needs json_schema.schema.")
    return StructuredOutputsParams(json=rf.json_schema.schema_)


def request_fields() -> set[str]:
    """Every field a completion, chat or KServe request names (for errors' `param`)."""
    return (set(CompletionRequest.model_fields) | set(ChatCompletionRequest.model_fields)
            | {f.name for f in dataclasses.fields(SamplingParams)})


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16  # null: the default too, as OpenAI documents it
    echo: bool = False
    logprobs: Optional[int] = None
    add_special_tokens: bool = True  # text prompts: BOS and the like, as the tokenizer adds
    suffix: Optional[str] = None

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any) -> Any:
        return 16 if value is None else value

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt must not be empty.")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str  # JSON text of an object


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    """A message of the conversation: an assistant's past tool calls and the tool
    results (role "tool", tool_call_id) come back as the chat template expects them (the
    arguments as objects). Fields of past turns that say nothing (a null refusal) pass;
    those that ask for what Tessera lacks (audio, a legacy function_call) are refused."""
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]  # others: 400
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None
    refusal: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None
    function_call: Optional[dict[str, Any]] = None
    audio: Optional[dict[str, Any]] = None
    annotations: Optional[list[dict[str, Any]]] = None

    def as_template_dict(self) -> dict[str, Any]:
        for field in ("refusal", "function_call", "audio", "annotations"):
            if getattr(self, field):
                raise ValueError(f"messages: {field} in a message is not supported "
                                 "(legacy function calls and audio are not implemented).")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("messages: only assistant messages carry tool_calls.")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("messages: a tool message needs the tool_call_id it answers.")
        content = self.content
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = []
            for part in content:
                if part.get("type") != "text":
                    raise ValueError(f"messages: content part type {part.get('type')!r} is not "
                                     "supported (text only).")
                if not isinstance(part.get("text", ""), str):
                    raise ValueError("messages: a text content part's text must be a string.")
                texts.append(part.get("text", ""))
            content = "".join(texts)
        d: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name:
            d["name"] = self.name
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                for c in self.tool_calls]
        return d


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"messages: a tool call's arguments must be a JSON object, got "
                         f"{text!r:.100}.")
    return value


class ChatCompletionRequest(_SamplingFields):
    refused: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {**UNSUPPORTED,
                                                                       **CHAT_UNSUPPORTED}
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the last message left open, to be continued
    add_special_tokens: bool = False  # on top of what the chat template writes
    documents: Optional[list[dict[str, Any]]] = None  # for templates that render them (RAG)
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    # tool calling (server/tools.py)
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    # refused unless they ask for nothing (UNSUPPORTED)
    functions: Optional[list[dict[str, Any]]] = None
    function_call: Optional[Union[str, dict[str, Any]]] = None
    echo: Optional[bool] = None
    audio: Optional[dict[str, Any]] = None
    modalities: Optional[list[str]] = None
    prediction: Optional[dict[str, Any]] = None
    reasoning_effort: Optional[str] = None
    web_search_options: Optional[dict[str, Any]] = None
    verbosity: Optional[str] = None

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeRequest(_Request):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Request):
    model: Optional[str] = None
    tokens: list[int]
