"""xgrammar's path for JSON schemas (structured/xgrammar_backend.py): which schemas it takes
(`fits`: the keywords it enforces, patterns JSON needs no escapes for), that its strings
admit no raw control character nor encoded surrogate (xgrammar 0.2.9's own grammar does),
that both libraries read SmolLM2's token bytes alike (logits past the tokenizer's
tokens aside: neither allows them), compact JSON,
random walks over SmolLM2's vocabulary (uniform over the allowed tokens, as random
weights sample) whose every finished output validates against its schema, and masks of
a fresh lazily compiled grammar filled on several threads (rows fed in one call) equal to
those filled one row at a time."""
from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

from tessera.structured.params import StructuredOutputsParams
from tessera.structured.xgrammar_backend import XGrammarCompiler, fill_masks, fits

xgrammar = pytest.importorskip("xgrammar")

S, I = {"type": "string"}, {"type": "integer"}
TAKEN = [
    {"type": "object", "properties": {"a": S, "b": I}, "required": ["a"],
     "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
    {"type": "string", "pattern": "^ab(c|d)*$"}, {"type": "string", "pattern": "x[0-9]+"},
    {"type": "string", "pattern": r"^[a-z]{1,12}@[a-z]{1,10}\.(com|org|net)$"},
    {"enum": ["a\"b", "é", 3, None, True]}, {"const": "x"},
    {"anyOf": [I | {"minimum": -5, "maximum": 5}, {"type": "null"}]},
    {"$defs": {"p": {"type": "object", "properties": {"n": S}}}, "type": "object",
     "properties": {"x": {"$ref": "#/$defs/p"}}, "title": "annotations pass"},
]
REFUSED = {  # keywords xgrammar would compile and not enforce, or compiles unsoundly
    "format": S | {"format": "date"}, "not": {"not": S}, "allOf": {"allOf": [I, I]},
    "oneOf": {"oneOf": [I, S]}, "uniqueItems": {"type": "array", "uniqueItems": True},
    "extra properties": {"type": "object", "additionalProperties": True},
    "number bounds": {"type": "number", "minimum": 0},
    "look-ahead": S | {"pattern": "(?=a)a"}, "dot": S | {"pattern": "a.b"},
    "negated class": S | {"pattern": "[^a]"}, "quote": S | {"pattern": '"'},
    "backslash": S | {"pattern": r"\\"}, "back-reference": S | {"pattern": r"(a)\1"},
    "\\s": S | {"pattern": r"\s"}, "pattern with lengths": S | {"pattern": "a+", "maxLength": 3},
    "several types": {"type": ["string", "null"]}, "x-guidance": {"type": "object",
                                                                   "x-guidance": {}},
    "remote $ref": {"$ref": "http://example.com/s"}, "missing $def": {"$ref": "#/$defs/q"},
    "required not listed": {"type": "object", "properties": {}, "required": ["a"]},
    "bool schema": True,
    "enum beside a type": {"type": "string", "enum": ["a", 1]},
    "const beside a type": {"type": "integer", "const": "x"},
    "an integer past 64 bits": {"const": 12345678901234567890},
    "an anchor inside": S | {"pattern": "a$b"}, "a caret inside": S | {"pattern": "x(^a)"},
    "array without items": {"type": "array", "minItems": 2},
    "a def in both containers": {"$defs": {"p": S | {"format": "date"}},
                                 "definitions": {"p": S}, "$ref": "#/$defs/p"},
    "a path into a def": {"$defs": {"default": S, "a": {"type": "object", "default": {}}},
                          "$ref": "#/$defs/a/default"},
}


@pytest.mark.parametrize("schema", TAKEN, ids=range(len(TAKEN)))
def test_fits_takes_enforced_keywords(schema):
    assert fits(schema)


@pytest.mark.parametrize("schema", REFUSED.values(), ids=REFUSED.keys())
def test_fits_refuses_the_rest(schema):
    assert not fits(schema)


@pytest.fixture(scope="module")
def compiler():
    from transformers import AutoTokenizer

    from tessera.default_model import default_model_path
    from tessera.frontend.gguf_tokenizer import exported_tokenizer_dir
    tok = AutoTokenizer.from_pretrained(exported_tokenizer_dir(default_model_path()))
    return XGrammarCompiler(tok, 49152, [tok.eos_token_id]), tok


def params(schema):
    return StructuredOutputsParams(json=schema)


def test_bounded_strings_refuse_raw_control_characters(compiler):
    c, _ = compiler
    schema = {"type": "object", "properties": {"a": S | {"maxLength": 5}},
              "required": ["a"], "additionalProperties": False}
    m = c.matcher(params(schema)).inner
    assert m.accept_string('{"a":"x')  # compact: no space after the colon
    assert not m.accept_string("\t")
    m = c.matcher(params(schema)).inner
    assert m.accept_string('{"a":"hé w"}') and m.is_completed()


def test_strings_refuse_encoded_surrogates(compiler):
    c, _ = compiler
    for string in (S, S | {"maxLength": 3}):
        m = c.matcher(params(string)).inner
        assert not m.accept_string(b'"\xed\xa0\x80')  # U+D800 in UTF-8: not UTF-8
        assert c.matcher(params(string)).inner.accept_string('"é"'.encode())


def test_both_libraries_read_the_vocabulary_alike(compiler):
    import llguidance.hf

    from tessera.structured.xgrammar_backend import vocabulary_mismatches
    c, tok = compiler
    llg = llguidance.hf.from_tokenizer(tok, n_vocab=49152, eos_token=[tok.eos_token_id])
    assert vocabulary_mismatches(c.info, llg, len(tok)) == []


def test_logits_past_the_tokenizer_are_no_mismatch_and_never_allowed():
    """A model whose logits outnumber its tokenizer's tokens (Qwen2.5: 151665 tokens, 152064
    logits at 7B): the ids past the tokenizer are read apart (xgrammar: nothing; llguidance:
    "<[id]>"), which is no reason to leave xgrammar, for neither library ever allows them."""
    import llguidance.hf
    import llguidance.numpy as lgn
    from transformers import AutoTokenizer

    from tessera.default_model import default_model_path
    from tessera.frontend.gguf_tokenizer import exported_tokenizer_dir
    from tessera.structured.grammar import GrammarCompiler
    from tessera.structured.xgrammar_backend import vocabulary_mismatches
    tok = AutoTokenizer.from_pretrained(exported_tokenizer_dir(default_model_path()))
    n, vocab, eos = len(tok), len(tok) + 64, tok.eos_token_id
    xgr = XGrammarCompiler(tok, vocab, [eos])
    llg = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=[eos])
    assert len(vocabulary_mismatches(xgr.info, llg, vocab)) == 64  # read apart, all of them
    assert vocabulary_mismatches(xgr.info, llg, n) == []
    schema = params({"type": "object", "properties": {"a": S, "b": I}, "required": ["a", "b"]})
    llg_compiler, pool = GrammarCompiler(tok, vocab, [eos]), xgrammar.BatchGrammarMatcher(1)
    for name, m in (("xgrammar", xgr.matcher(schema)),
                    ("llguidance", llg_compiler.matcher(schema))):
        rng = random.Random(0)
        for _ in range(40):
            mask = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
            if name == "xgrammar":
                fill_masks(pool, [(m, 0)], mask)
            else:
                lgn.fill_next_token_bitmask(m, mask, 0)
            bits = np.unpackbits(mask[0].view(np.uint8), bitorder="little")[:vocab]
            assert not bits[n:].any(), name
            token = rng.choice(np.flatnonzero(bits[:n]).tolist())
            if token == eos:
                break
            assert m.consume_token(token)


def test_schemas_it_does_not_fit_are_left_to_llguidance(compiler):
    c, _ = compiler
    assert c.matcher(params(REFUSED["format"])) is None
    assert c.matcher(StructuredOutputsParams(regex="a+")) is None
    empty = params(I | {"minimum": 5, "maximum": 1})  # fits, but xgrammar refuses it
    assert c.matcher(empty) is None and c.matcher(empty) is None  # (remembered)


@pytest.mark.parametrize("schema", TAKEN + [
    {"type": "object", "properties": {
        "name": S | {"maxLength": 8}, "age": I | {"minimum": 0, "maximum": 120},
        "email": S | {"pattern": r"^[a-z]{1,6}@[a-z]{1,5}\.(com|org)$"},
        "role": {"enum": ["admin", "x\ty", "q\"uote"]},
        "tags": {"type": "array", "items": S | {"minLength": 2, "maxLength": 6}, "maxItems": 3}},
     "required": ["name", "age", "email", "role", "tags"], "additionalProperties": False}],
    ids=list(range(len(TAKEN))) + ["record"])
def test_random_walks_give_valid_json(compiler, schema):
    c, tok = compiler
    pool = xgrammar.BatchGrammarMatcher(max_threads=1)
    vocab, eos = 49152, tok.eos_token_id
    finished = 0
    for seed in range(6):
        rng, m, ids = random.Random(seed), c.matcher(params(schema)), []
        mask = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
        for _ in range(200):
            fill_masks(pool, [(m, 0)], mask)
            allowed = np.flatnonzero(np.unpackbits(mask[0].view(np.uint8),
                                                   bitorder="little")[:vocab])
            assert len(allowed), "a matcher that allows nothing"
            if eos in allowed and (rng.random() < 0.5 or len(allowed) == 1):
                break
            t = int(rng.choice([t for t in allowed if t != eos]))
            assert m.consume_token(t)
            ids.append(t)
        else:
            continue  # the cap: not finished, nothing to judge
        finished += 1
        jsonschema.validate(json.loads(tok.decode(ids)), schema)
    assert finished >= 3


RECORD = {"type": "object", "properties": {
    "name": S | {"maxLength": 8}, "age": I | {"minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": S | {"maxLength": 6}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}


def test_threads_fill_masks_as_one_does(compiler):
    """The worker fills a step's rows on several of xgrammar's threads and feeds their
    tokens in one call (worker/grammar_masks.py); with lazily made masks, rows of one
    fresh grammar reach new states at once. Each step's masks equal those of a second
    fresh grammar whose rows are fed and filled one at a time on one thread."""
    from tessera.structured.xgrammar_backend import accept_tokens
    _, tok = compiler
    vocab, rows = 49152, 24
    many, one = (XGrammarCompiler(tok, vocab, [tok.eos_token_id]) for _ in range(2))
    par, serial = [[c.matcher(params(RECORD)) for _ in range(rows)] for c in (many, one)]
    pool4, pool1 = (xgrammar.BatchGrammarMatcher(max_threads=n) for n in (4, 1))
    got, want = (np.zeros((rows, (vocab + 31) // 32), dtype=np.int32) for _ in range(2))
    rng, live, checked = random.Random(0), list(range(rows)), 0
    while live:
        fill_masks(pool4, [(par[r], r) for r in live], got)
        for r in live:
            fill_masks(pool1, [(serial[r], r)], want)
        assert np.array_equal(got[live], want[live])
        checked += len(live)
        steps = []
        for r in live:
            allowed = np.flatnonzero(np.unpackbits(want[r].view(np.uint8),
                                                   bitorder="little")[:vocab])
            allowed = [t for t in allowed if t != tok.eos_token_id]
            if allowed:
                steps.append((r, int(rng.choice(allowed))))
        assert all(accept_tokens([(par[r], t) for r, t in steps]))
        assert all(serial[r].consume_token(t) for r, t in steps)
        live = [r for r, _ in steps]
    assert checked >= 10 * rows  # rows' masks compared
