"""xgrammar for the JSON schemas whose masks it makes soundly: token masks kept per grammar
state, several times cheaper to fill than llguidance's walks where a bounded string
leaves few characters (benchmarks/RESULTS.md, 2026-12-04: Qwen2.5's vocabulary, 64 rows
of the overhead benchmark's record, one thread: 1.5 ms a step against 12-17).

Objects: `fits(schema)` (whether a JSON schema keeps to the keywords checked here),
XGrammarCompiler (the tokenizer as xgrammar sees it; `matcher(params)` -> an
XGrammarMatcher for a fitting schema, None for anything else, which llguidance serves),
XGrammarMatcher (`consume_token`, as llguidance's matcher; `inner`, xgrammar's),
`accept_tokens(rows)` and `fill_masks(pool, rows, mask)` (batch calls that let go of the
GIL), `vocabulary_mismatches(info, llg_tokenizer, num_tokens)` (the worker
takes xgrammar only where both libraries read every token's bytes alike).

Why a whitelist: xgrammar 0.2.9 compiles some schemas into grammars that accept
invalid output or ignore a constraint (benchmarks/grammar_backends.py, fourteenth
session): a string with minLength / maxLength becomes `[^"\\\\\\r\\n]{m,n}`, which lets
raw control characters into the JSON (fixed here in the grammar's text: the class of its
own unbounded strings), and `not`, `uniqueItems`, `allOf`, look-around in patterns and
`format` are compiled and not enforced. So only these keywords take this path: type
(one name), properties / required / additionalProperties (absent or false; absent
means none here, a subset of the schema's instances), items / minItems / maxItems,
minLength / maxLength, patterns of literal text, ranges, \\d, \\w, groups, alternatives,
quantifiers and anchors (no `.`, negation or look-around: a character they admit may be
one JSON must escape), integer bounds, enum / const of scalars, anyOf, local $ref to
$defs / definitions, and annotations. Everything else, and `x-guidance` options, stays
with llguidance, which the API process checks every grammar with in any case.
JSON is generated compact (separators "," and ":"), as structured/grammar.py does.
"""
from __future__ import annotations

import json
import logging
import math
import re
from typing import Any, Optional, Sequence

from tessera.structured.compiled_cache import CompiledCache
from tessera.structured.params import StructuredOutputsParams

logger = logging.getLogger(__name__)
CACHE_SIZE = 256  # compiled grammars kept
ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id",
               "deprecated", "readOnly", "writeOnly"}
TYPE_KEYS = {"object": {"properties", "required", "additionalProperties"},
             "array": {"items", "minItems", "maxItems"},
             "string": {"minLength", "maxLength", "pattern"},
             "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
             "number": set(), "boolean": set(), "null": set()}
# a pattern of literal text, ranges, \d / \w / escaped punctuation, groups, alternatives,
# quantifiers and anchors, of characters JSON needs no escape for: no '.', no negated
# class, no backslash or quote, no look-around or back-reference
_SAFE = r"A-Za-z0-9 _@,:#%&!~'<>;=/\-"
_PATTERN_TOKEN = re.compile(r"\\[dw.\-+*?()\[\]{}|^$/@_:,]"
                            rf"|\[(?!\^)(?:\\[dw.\-+]|[{_SAFE}.+])+\]"
                            r"|\((?:\?:|(?!\?))|[)|^$*+?]|\{\d+(?:,\d*)?\}"
                            rf"|[{_SAFE}]")
# xgrammar's classes for a character of a bounded string (raw control characters pass)
# and of an unbounded one (UTF-8-encoded surrogates pass), both made this one
_BOUNDED_CHAR = r'[^\"\\\r\n]'
_UNBOUNDED_CHAR = r'[^\0-\x1f\"\\\r\n]'
_JSON_CHAR = r'[^\0-\x1f\"\\\r\n\uD800-\uDFFF]'


def _scalar(v: Any) -> bool:
    """A JSON scalar xgrammar writes exactly (its integers are 64-bit)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return True
    if isinstance(v, int):
        return -2**63 <= v < 2**63
    return isinstance(v, float) and math.isfinite(v)


def _simple_pattern(p: Any) -> bool:
    """Whether p is made of _PATTERN_TOKEN's tokens, '^' only first and '$' only last
    (xgrammar ignores an anchor elsewhere)."""
    if not isinstance(p, str) or not p:
        return False
    tokens, pos = [], 0
    while pos < len(p):
        m = _PATTERN_TOKEN.match(p, pos)
        if m is None:
            return False
        tokens.append(m.group())
        pos = m.end()
    return "^" not in tokens[1:] and "$" not in tokens[:-1]


def _fits(node: Any, defs: dict) -> bool:
    if not isinstance(node, dict):
        return False
    keys = set(node) - ANNOTATIONS
    if "$ref" in keys:  # exactly #/$defs/NAME or #/definitions/NAME, a definition checked
        ref = node["$ref"]
        if keys != {"$ref"} or not isinstance(ref, str):
            return False
        _, _, rest = ref.partition("#/")
        container, _, name = rest.partition("/")
        return (ref.startswith("#/") and container in defs and "/" not in name
                and "~" not in name and name in defs[container])
    if "enum" in keys or "const" in keys:  # alone: xgrammar drops a `type` beside them
        values = node.get("enum", [node.get("const")])
        return (len(keys) == 1 and isinstance(values, list) and bool(values)
                and all(map(_scalar, values)))
    if "anyOf" in keys:
        options = node["anyOf"]
        return (keys == {"anyOf"} and isinstance(options, list) and bool(options)
                and all(_fits(o, defs) for o in options))
    kind = node.get("type")
    if not isinstance(kind, str) or kind not in TYPE_KEYS or not keys - {"type"} <= TYPE_KEYS[kind]:
        return False
    if kind == "object":
        props = node.get("properties", {})
        required = node.get("required", [])
        return (isinstance(props, dict) and node.get("additionalProperties", False) is False
                and isinstance(required, list) and set(required) <= set(props)
                and all(_fits(v, defs) for v in props.values()))
    if kind == "array":  # (without items xgrammar writes only [], or fails on minItems)
        return "items" in node and _fits(node["items"], defs)
    if kind == "string":
        return "pattern" not in node or (_simple_pattern(node["pattern"])
                                         and not keys & {"minLength", "maxLength"})
    if kind == "integer":
        return all(isinstance(node[k], int) and not isinstance(node[k], bool)
                   for k in keys - {"type"})
    return True


def fits(schema: Any) -> bool:
    """Whether xgrammar's masks for this JSON schema (a dict) are sound: every keyword in
    the list above, at every level, $defs / definitions included."""
    if not isinstance(schema, dict) or "x-guidance" in schema:
        return False
    defs = {}  # container -> its definitions, each container checked apart
    for key in ("$defs", "definitions"):
        if key in schema:
            if not isinstance(schema[key], dict):
                return False
            defs[key] = schema[key]
    root = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    return _fits(root, defs) and all(_fits(d, defs) for c in defs.values() for d in c.values())


class XGrammarMatcher:
    """One request's xgrammar matcher, as the worker drives llguidance's: consume_token."""

    def __init__(self, inner: Any):
        self.inner = inner

    def consume_token(self, token: int) -> bool:
        return self.inner.accept_token(token)


class XGrammarCompiler:
    """hf_tokenizer, vocab_size (the logits' width) and eos_token_ids as GrammarCompiler's
    (structured/grammar.py); compiled grammars cached by the schema's text, and so are the
    schemas it does not take (None). Compiles lazily (xgrammar's dynamic compilation: a
    state's mask is made the first time a matcher reaches it, so a new schema costs ~1 ms
    here, not ~55 ms of precomputing masks over Qwen2.5's vocabulary on the step loop).
    Thread-safe."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int],
                 threads: int = 1, cache_size: int = CACHE_SIZE):
        import xgrammar
        self._xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_token_ids))
        self.compiler = xgrammar.GrammarCompiler(  # (its own cache is unbounded: ours is)
            self.info, max_threads=max(1, threads), cache_enabled=False,
            enable_dynamic_compilation=True)
        self._cache = CompiledCache(cache_size)

    def matcher(self, params: StructuredOutputsParams) -> Optional[XGrammarMatcher]:
        """A fresh matcher for a JSON schema that `fits` and compiles, else None."""
        if params.kind != "json":
            return None
        compiled = self._cache.get(params.key, lambda: self._compile_fitting(params.json))
        return None if compiled is None else XGrammarMatcher(self._xgr.GrammarMatcher(compiled))

    def _compile_fitting(self, text: str) -> Any:
        schema = json.loads(text)
        if not fits(schema):
            return None
        try:
            return self._compile(schema)
        except Exception as e:  # noqa: BLE001 - xgrammar refuses it: llguidance serves it
            logger.warning("xgrammar cannot compile a schema (%s); llguidance serves it", e)
            return None

    def _compile(self, schema: dict) -> Any:
        xgr = self._xgr
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False,
                                               separators=(",", ":"))
        text = str(grammar).replace(_BOUNDED_CHAR, _JSON_CHAR).replace(_UNBOUNDED_CHAR,
                                                                       _JSON_CHAR)
        return self.compiler.compile_grammar(xgr.Grammar.from_ebnf(text, root_rule_name="root"))


_NEVER_UTF8 = set(range(0xF5, 0x100)) | {0xC0, 0xC1}  # bytes no UTF-8 text holds


def vocabulary_mismatches(info: Any, llg_tokenizer: Any, num_tokens: int) -> list[int]:
    """Token ids whose bytes xgrammar (info: its TokenizerInfo) and llguidance read apart,
    but for tokens llguidance reads as nothing that hold a byte no UTF-8 text has (Qwen2.5's
    lone 0xFF: no JSON output can take it), and for the logits' ids past the tokenizer's
    num_tokens (Qwen2.5's 151665 tokens of 151936 or 152064 logits) that xgrammar reads as
    nothing: neither library allows those (llguidance renders them "<[id]>"). The masks
    are only as right as the bytes."""
    return [i for i, xb in enumerate(info.decoded_vocab)
            if (lb := llg_tokenizer.decode_bytes([i])) != xb
            and not (lb == b"" and _NEVER_UTF8 & set(xb))
            and not (i >= num_tokens and xb == b"")]


def accept_tokens(rows: list[tuple[XGrammarMatcher, int]]) -> list[bool]:
    """Feeds each matcher its token, all in one call that lets go of the GIL; whether
    each was accepted."""
    import xgrammar
    return xgrammar.BatchGrammarMatcher.batch_accept_token([m.inner for m, _ in rows],
                                                           [t for _, t in rows])


def fill_masks(pool: Any, rows: list[tuple[XGrammarMatcher, int]], mask: Any) -> None:
    """Fills rows' masks (matcher, row index) into mask [N, W] int32 (host) (pool: an
    xgrammar.BatchGrammarMatcher; it lets go of the GIL while it fills)."""
    pool.batch_fill_next_token_bitmask([m.inner for m, _ in rows], mask,
                                       [row for _, row in rows])
