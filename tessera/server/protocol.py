"""OpenAI request bodies (pydantic), what each field does here, and their SamplingParams.

Every field a request may carry is one of three kinds; nothing is silently ignored:
- implemented: the OpenAI fields Tessera honours, and the extra sampling fields users send
  through the SDK's `extra_body` (top_k, min_p, repetition_penalty, min_tokens, ignore_eos,
  stop_token_ids, ..., `return_token_ids`: each choice, and each streamed chunk, also
  carries its new token ids, the prompt's once), and vLLM's chat extras
  (add_special_tokens, continue_final_message, documents, chat_template[_kwargs]);
- accepted without effect, the allow-list NO_EFFECT (`user`, `metadata`,
  `safety_identifier`, `prompt_cache_key`: identifiers and hints whose absence of effect
  changes no answer);
- refused with a 400 naming the field: any other field (pydantic `extra="forbid"`), and
  the fields in UNSUPPORTED (and CHAT_UNSUPPORTED) when they ask for what Tessera lacks (`response_format` other
  than text, `tools` and tool choices, `best_of` above n, beam search, priorities, audio,
  ...; `check_supported()`). Structured output and tool calling come with their own issue.
`sampling_params` validates values through SamplingParams (ValueError naming the field ->
HTTP 400).
"""
from __future__ import annotations

import dataclasses

from typing import Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from tessera.sampling_params import SamplingParams

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
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "structured output (response_format other than text)"),
    "tools": (_empty, "tool calling"),
    "tool_choice": (_none_or("none", "auto"), "tool calling"),
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
    response_format: Optional[dict[str, Any]] = None
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
            skip_special_tokens=self.skip_special_tokens)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def request_fields() -> set[str]:
    """Every field a completion, chat or KServe request names (for errors' `param`)."""
    return (set(CompletionRequest.model_fields) | set(ChatCompletionRequest.model_fields)
            | {f.name for f in dataclasses.fields(SamplingParams)})


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16
    echo: bool = False
    logprobs: Optional[int] = None
    add_special_tokens: bool = True  # text prompts: BOS and the like, as the tokenizer adds
    suffix: Optional[str] = None

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt must not be empty.")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ChatMessage(BaseModel):
    """A message of the conversation. Fields of past assistant turns that say nothing (a
    null refusal, no tool calls) are accepted; tool calls are refused with tools."""
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]  # others: 400
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None
    refusal: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None
    function_call: Optional[dict[str, Any]] = None
    audio: Optional[dict[str, Any]] = None
    annotations: Optional[list[dict[str, Any]]] = None

    def as_template_dict(self) -> dict[str, Any]:
        for field in ("refusal", "tool_calls", "tool_call_id", "function_call", "audio",
                      "annotations"):
            if getattr(self, field):
                raise ValueError(f"messages: {field} in a message is not supported "
                                 "(tool calling and audio are not implemented).")
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
        d = {"role": self.role, "content": content or ""}
        if self.name:
            d["name"] = self.name
        return d


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
    # refused unless they ask for nothing (UNSUPPORTED)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None  # no effect without tools
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
