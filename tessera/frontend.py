"""Frontend: what runs where requests come in, before and after the engine core.

Objects: PreparedPrompt, Frontend. The frontend knows the model's metadata (read from the
checkpoint's config, no weights), owns the tokenizer, validates and tokenizes prompts
(ValueError naming the problem), fans n > 1 out into child requests, and turns the
core's outputs into RequestOutputs (OutputProcessor: detokenization, stop strings).
Both the in-process LLMEngine and the server's engine client use it; it never touches
tensors, so it can live in the API process.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Union

from tessera.config import EngineConfig
from tessera.engine.output_processor import OutputProcessor
from tessera.models.loader import ModelSource, resolve_model
from tessera.sampling_params import SamplingParams
from tessera.tokenizer import generation_defaults, generation_eos_ids, load_tokenizer

logger = logging.getLogger(__name__)

PromptType = Union[str, list[int], dict]


@dataclasses.dataclass
class PreparedPrompt:
    text: Optional[str]
    token_ids: list[int]


class Frontend:
    def __init__(self, config: EngineConfig):
        self.config = config
        source = resolve_model(config.model)
        self.tokenizer = load_tokenizer(config.model, source)
        source.arch = dataclasses.replace(source.arch, eos_token_ids=self._eos_ids(source))
        self.source = source
        self.arch = source.arch
        self.max_model_len = self._max_model_len()
        self.generation_defaults = generation_defaults(source)
        self.output_processor = OutputProcessor(self.tokenizer)

    def _eos_ids(self, source: ModelSource) -> tuple[int, ...]:
        ids = set(source.arch.eos_token_ids) | set(generation_eos_ids(source))
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def _max_model_len(self) -> int:
        limit = self.arch.max_position_embeddings
        asked = self.config.model.max_model_len
        if asked is not None and asked > limit:
            raise ValueError(f"max_model_len {asked} is longer than the model's context "
                             f"({limit} positions).")
        return asked or limit

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        return SamplingParams(**{**self.generation_defaults, **overrides})

    def prepare_prompt(self, prompt: PromptType, check_length: bool = True) -> PreparedPrompt:
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
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, list(prompt)
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.arch.vocab_size]
            if bad:
                raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary "
                                 f"(0..{self.arch.vocab_size - 1}).")
        if not ids:
            raise ValueError("the prompt is empty.")
        if check_length and len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens, but the model's maximum context "
                             f"length is {self.max_model_len} tokens (prompt plus at least one "
                             "new token must fit).")
        return PreparedPrompt(text, ids)

    @staticmethod
    def children(request_id: str, params: SamplingParams) -> list[tuple[str, SamplingParams]]:
        """n > 1 becomes n single-sample requests; seeded ones get seeds seed, seed+1, ..."""
        if params.n == 1:
            return [(request_id, params)]
        return [(f"{request_id}-{i}", params.clone(
            n=1, seed=None if params.seed is None else params.seed + i)) for i in range(params.n)]

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer.")
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: Optional[str] = None, **kwargs: Any) -> list[int]:
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
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template error: {e}") from None
        return tok.encode(text, add_special_tokens=False)
