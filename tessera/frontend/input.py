"""InputProcessor: what happens to a request where it comes in, before the engine core.

Objects: PreparedPrompt, InputProcessor. It holds the resolved config (its ModelInfo:
frontend/model_info.py) and the tokenizer; it validates and tokenizes prompts (ValueError
naming the problem), renders chat templates (a message's spelled control tokens stay text:
frontend/control_tokens.py), gives the model's default sampling settings
and fans n > 1 out into child requests; it checks a request's structured outputs
(`check_structured`: the grammar compiles, structured/grammar.py). It never touches
tensors (no torch, no model code), so it lives in the API process; the engine clients
(engine/client.py) use it.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional, Union

from tessera.config import EngineConfig
from tessera.engine.request import check_token_ids
from tessera.frontend.control_tokens import ControlTokens
from tessera.sampling_params import SamplingParams

PromptType = Union[str, list[int], dict]


def check_text(text: str, what: str) -> None:
    """ValueError unless text is encodable UTF-8 (JSON may carry a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode text: a lone surrogate "
                         f"{text[e.start]!r} at character {e.start}.") from None


@dataclasses.dataclass
class PreparedPrompt:
    text: Optional[str]
    token_ids: list[int]


class InputProcessor:
    def __init__(self, config: EngineConfig, tokenizer: Optional[Any]):
        self.config = config
        self.tokenizer = tokenizer
        info = config.info
        self.arch = info.arch
        self.model_path = info.path
        self.max_model_len = info.max_model_len
        self.generation_defaults = info.generation_defaults
        self._max_text_bytes: Optional[int] = None  # `_check_size`'s bound, on first use
        self._grammars = None  # structured/grammar.py GrammarCompiler, on first use
        self._grammars_lock = threading.Lock()
        self._control: Optional[ControlTokens] = None  # the tokenizer's, on first use

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        return SamplingParams(**{**self.generation_defaults, **overrides})

    def prepare_prompt(self, prompt: PromptType, check_length: bool = True,
                       add_special_tokens: bool = True) -> PreparedPrompt:
        """A text prompt is encoded (with the tokenizer's special tokens: BOS where it adds
        one, unless add_special_tokens is False); token ids are checked."""
        if isinstance(prompt, PreparedPrompt):
            return prompt
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'.")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass prompt token ids.")
            check_text(prompt, "the prompt")
            self._check_size(prompt)
            text, ids = prompt, self.tokenizer.encode(prompt,
                                                      add_special_tokens=add_special_tokens)
        else:
            text, ids = None, list(prompt)
            check_token_ids(ids, None, self.arch.vocab_size)
        if not ids:
            raise ValueError("the prompt is empty.")
        if check_length and len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens, but the model's maximum context "
                             f"length is {self.max_model_len} tokens (prompt plus at least one "
                             "new token must fit).")
        return PreparedPrompt(text, ids)

    def _check_size(self, text: str) -> None:
        """ValueError, before tokenizing, for a text too long to fit the context whatever
        its tokens: more UTF-8 bytes than the context length times twice the longest
        token's (a token's text in the vocabulary never has fewer bytes than it decodes
        to); a prompt of megabytes costs no tokenizer time."""
        if self._max_text_bytes is None:
            vocab = self.tokenizer.get_vocab()
            longest = max((len(t.encode("utf-8", "replace")) for t in vocab), default=1)
            self._max_text_bytes = 2 * longest * self.max_model_len
        if len(text) <= self._max_text_bytes // 4:  # 4 bytes a character at most
            return
        size = len(text.encode("utf-8"))
        if size > self._max_text_bytes:
            raise ValueError(f"the prompt has {size} bytes of text, more than can fit the "
                             f"model's context of {self.max_model_len} tokens.")

    def children(self, request_id: str, params: SamplingParams
                 ) -> list[tuple[str, SamplingParams]]:
        """n > 1 becomes n single-sample requests; seeded ones get seeds seed, seed+1, ...
        Stop token ids are checked against the vocabulary first (ValueError)."""
        check_token_ids([], params, self.arch.vocab_size)
        self.check_structured(params)
        if params.n == 1:
            return [(request_id, params)]
        return [(f"{request_id}-{i}", params.clone(
            n=1, seed=None if params.seed is None else params.seed + i)) for i in range(params.n)]

    def check_structured(self, params: SamplingParams) -> None:
        """ValueError naming what is wrong with params' grammar, if it has one (compiled
        once per schema and cached: the server calls this off its event loop first)."""
        if params.structured_outputs is not None:
            self.grammars.check(params.structured_outputs)

    @property
    def grammars(self):
        """The GrammarCompiler (built on first use: reading the vocabulary takes ~0.5 s)."""
        with self._grammars_lock:
            if self._grammars is None:
                if self.tokenizer is None:
                    raise ValueError("structured outputs need the model's tokenizer, and this "
                                     "server has none.")
                from tessera.structured.grammar import GrammarCompiler
                self._grammars = GrammarCompiler(self.tokenizer, self.arch.vocab_size,
                                                 self.arch.eos_token_ids)
            return self._grammars

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer.")
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: Optional[str] = None,
                            add_special_tokens: bool = False, **kwargs: Any) -> list[int]:
        """The conversation rendered by the chat template (kwargs reach the template:
        documents, continue_final_message, ...) and encoded; add_special_tokens: the
        tokenizer's own (BOS ...) on top of what the template writes. A message's text that
        spells a control token (`<|im_start|>`) is encoded as text: no forged turns
        (frontend/control_tokens.py), unless allow_control_tokens_in_messages."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so it has no chat template.")
        if self.config.model.allow_control_tokens_in_messages:
            text = self.chat_text(messages, add_generation_prompt, chat_template, **kwargs)
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if self._control is None:
            self._control = ControlTokens(self.tokenizer)
        return self._control.encode_conversation(
            lambda msgs: self.chat_text(msgs, add_generation_prompt, chat_template, **kwargs),
            messages, add_special_tokens)

    def chat_text(self, messages: list[dict], add_generation_prompt: bool = True,
                  chat_template: Optional[str] = None, **kwargs: Any) -> str:
        """The conversation rendered by the chat template, as text."""
        tok = self.tokenizer
        if tok is None:
            raise ValueError("this model has no tokenizer, so it has no chat template.")
        if chat_template is None and not getattr(tok, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; pass chat_template=...")
        import jinja2
        extra = {k: v for k, v in kwargs.items()
                 if k not in ("tokenize", "chat_template", "conversation", "messages")}
        add_generation_prompt = extra.pop("add_generation_prompt", add_generation_prompt)
        try:
            text = tok.apply_chat_template(messages, tokenize=False, chat_template=chat_template,
                                           add_generation_prompt=add_generation_prompt, **extra)
        except (jinja2.TemplateError, TypeError, AttributeError, KeyError) as e:
            # the template meeting values of the wrong shape (tools: 5) is the request's fault
            raise ValueError(f"chat template error: {type(e).__name__}: {e}") from None
        check_text(text, "the conversation")
        return text
