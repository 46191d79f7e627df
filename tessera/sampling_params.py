"""SamplingParams: how one request picks its tokens and when it stops.

Validated at construction: a bad value raises ValueError naming the field, so the
server can answer HTTP 400 and the engine never sees it. Integers are integers (never
true/false) below MAX_INT (2^31: they become int32/int64 tensors and msgpack frames),
floats are finite. Token ids are checked against the vocabulary where it is known
(frontend/input.py, and again by the engine core). Field names follow vLLM and the
OpenAI API so users' code carries over.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from tessera.structured.params import StructuredOutputsParams

_MAX_LOGPROBS = 20
MAX_INT = 2**31  # counts, top_k and token ids stay below it


@dataclasses.dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    min_p: float = 0.0
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: Optional[int] = 16  # None: up to the context length
    min_tokens: int = 0
    stop: Optional[list[str]] = None
    stop_token_ids: Optional[list[int]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: Optional[int] = None  # top alternatives per output token (0: sampled only)
    prompt_logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    # the output must match a JSON schema, regex, choice or grammar (structured/params.py)
    structured_outputs: Optional[StructuredOutputsParams] = None

    def __post_init__(self) -> None:
        if self.structured_outputs is not None:
            self.structured_outputs = StructuredOutputsParams.of(self.structured_outputs)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple, type(None))):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}.")
        if not isinstance(self.stop_token_ids, (list, tuple, type(None))):
            raise ValueError(f"stop_token_ids must be a list of integers, got "
                             f"{self.stop_token_ids!r}.")
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"{field} {why}, got {getattr(self, field)!r}.")

        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(name, "must be a number")
            try:
                setattr(self, name, float(value))  # an int field value becomes its float
            except OverflowError:
                bad(name, "must be a finite number")
            if not math.isfinite(getattr(self, name)):
                bad(name, "must be a finite number")
        for name in ("n", "top_k", "min_tokens", "max_tokens", "logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is None and name in ("max_tokens", "logprobs", "prompt_logprobs"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, "must be an integer")
            if not -MAX_INT < value < MAX_INT:
                bad(name, "must be below 2^31 in magnitude")
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "must be an integer >= 1")
        if self.temperature < 0:
            bad("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "must be -1, 0 (disabled) or a positive integer")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not -2 <= self.presence_penalty <= 2:
            bad("presence_penalty", "must be in [-2, 2]")
        if not -2 <= self.frequency_penalty <= 2:
            bad("frequency_penalty", "must be in [-2, 2]")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be > 0")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad("max_tokens", "must be an integer >= 1")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            bad("min_tokens", "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad("min_tokens", f"must be <= max_tokens ({self.max_tokens})")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -2**63 <= self.seed < 2**63):
            bad("seed", "must be a 64-bit integer")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= _MAX_LOGPROBS):
                bad(name, f"must be an integer in [0, {_MAX_LOGPROBS}]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < MAX_INT
               for t in self.stop_token_ids):
            bad("stop_token_ids", "must be token ids (integers in [0, 2^31))")
        if self.structured_outputs is not None and (self.ignore_eos or self.min_tokens):
            field = "ignore_eos" if self.ignore_eos else "min_tokens"
            bad(field, "cannot be combined with structured outputs (the grammar decides where "
                "the output ends)")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1

    def clone(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)
