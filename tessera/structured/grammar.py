"""Grammars for structured outputs, compiled with llguidance.

Objects: GrammarCompiler (the model's tokenizer as llguidance sees it, and a bounded LRU
cache of compiled grammars by StructuredOutputsParams.key, structured/compiled_cache.py:
up to `families` independently compiled matchers per grammar, one more for each request
until there are that many, then copies of them in turn), `grammar_definition(params)`
(llguidance's grammar text for a JSON schema, any JSON object, a regex, a choice, or a
Lark/GBNF grammar). Two processes compile: the API process checks each request's
grammar (a 400 naming the problem: an invalid schema, an unsupported keyword, a regex
that does not parse), and the workers that sample (worker/grammar_masks.py) make one
matcher per request: a copy of the cached compiled grammar, advanced token by token.
JSON is generated compact (no whitespace between tokens: small models otherwise loop on
newlines); a schema's own `x-guidance` settings may change that.

Why llguidance first (benchmarks/grammar_backends.py, RESULTS.md): it compiles JSON
schemas in about a millisecond (lazily: no whole-vocabulary precomputation), covers
more of JSON Schema (patterns, numeric bounds) and names what it does not support rather
than ignoring it, fills a batch of masks on its own threads, and needs neither torch nor
a GPU build (the API process checks grammars without torch). Its masks cost a walk of
the vocabulary where a bounded string leaves few characters, so for the JSON schemas
that xgrammar enforces soundly the worker takes xgrammar's precomputed masks instead
(structured/xgrammar_backend.py; --structured-outputs-backend). Measured on the H200's
host (benchmarks/grammar_fill_profile.py): copies of one compiled matcher share its
caches behind a lock, so filling 64 masks on 16 threads took as long as on one (5.9 ms);
with 16 families, 1.4 ms.
"""
from __future__ import annotations

import json
import re
import threading
from typing import Any, Sequence

import llguidance
import llguidance.hf

from tessera.structured.compiled_cache import CompiledCache
from tessera.structured.params import StructuredOutputsParams

CACHE_SIZE = 256  # compiled grammars kept
_JSON_DEFAULTS = {"whitespace_flexible": False}
# llguidance's "slices": sets of tokens whose mask is precomputed, added whole where the
# lexer accepts every string of the slice's regex, so only the other tokens are walked.
# Its default (whitespace, unescaped JSON string text of 1-10, 1-30 and any length) helps
# no string with fewer than 10 characters left of a maxLength, where most of the fill
# time goes; finer lengths do (benchmarks/grammar_fill_profile.py, Qwen2.5's 152k
# vocabulary, 64 rows of the person-record schema walked by random allowed tokens, one
# thread: 192.5 -> 136.5 us a row, SmolLM2 1.21x; the masks bit-identical at every step
# of the walk, 230k rows compared; the tokenizer takes ~0.5 s longer to build, once).
_TEXT = r'[^"\\\x00-\x1F\x7F]'  # a JSON string character that needs no escape
SLICES = ([r"[\x20\x0A\x0D\x09]+"]
          + [f"{_TEXT}{{1,{n}}}" for n in (1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32)]
          + [f"{_TEXT}+"])  # (None: llguidance's default, an A/B knob)


def grammar_definition(params: StructuredOutputsParams) -> str:
    kind = params.kind
    if kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(params.json, defaults=_JSON_DEFAULTS)
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"},
                                                             defaults=_JSON_DEFAULTS)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(params.regex)
    if kind == "choice":
        return llguidance.grammar_from("choice", json.dumps(params.choice))
    return llguidance.grammar_from("grammar", params.grammar)  # Lark, or GBNF/EBNF


class GrammarCompiler:
    """hf_tokenizer: a fast Hugging Face tokenizer; vocab_size: the model's (its logits'
    width, which may exceed the tokenizer's); eos_token_ids: the ids that end a request,
    allowed where the grammar is complete. Thread-safe (the API checks in a pool)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int],
                 cache_size: int = CACHE_SIZE, families: int = 1):
        if not eos_token_ids:
            raise ValueError("structured outputs need the model's end-of-sequence token id.")
        self.eos_token_ids = list(eos_token_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                                      eos_token=self.eos_token_ids,
                                                      slices=SLICES)
        self.families = max(1, families)
        # key -> [compiled matchers (families of them), how many copies were handed out]
        self._cache = CompiledCache(cache_size)
        self._lock = threading.Lock()  # an entry's families and turn

    def check(self, params: StructuredOutputsParams) -> None:
        """ValueError naming what is wrong with params' grammar (compiled and cached)."""
        self._compiled(params)

    def matcher(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        """A fresh matcher at the grammar's start: a copy of one of the cached compiled
        ones, in turn (copies of one share its lazily built lexer caches behind a lock,
        so rows whose masks are filled on different threads had better not all be)."""
        entry = self._compiled(params)
        with self._lock:
            families, turn = entry
            entry[1] += 1
            grow = len(families) < self.families
        if grow:  # one more family, compiled now (a request's matcher of its own)
            family = self._compile(params)
            with self._lock:
                families.append(family)
            return family.deep_copy()
        return families[turn % len(families)].deep_copy()

    def _compiled(self, params: StructuredOutputsParams) -> list:
        return self._cache.get(params.key, lambda: [[self._compile(params)], 0])

    def _compile(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        what = {"json": "JSON schema", "json_object": "JSON object", "regex": "regex",
                "choice": "choice", "grammar": "grammar"}[params.kind]
        try:
            definition = grammar_definition(params)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"structured outputs: the {what} is invalid: {e}") from None
        matcher = llguidance.LLMatcher(self.tokenizer, definition, log_level=0)
        if matcher.is_error():
            raise ValueError(f"structured outputs: the {what} cannot be used: "
                             f"{_reason(matcher.get_error())}")
        return matcher


def _reason(message: str) -> str:
    """llguidance's message without its echo of the grammar and the caret lines."""
    lines = [ln.strip() for ln in message.strip().splitlines()]
    kept = [ln for ln in lines if ln and not re.fullmatch(r"\^+|\d+ \|.*", ln)]
    return " ".join(kept)[:500] if kept else "unknown error"
