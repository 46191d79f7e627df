"""Structured outputs in the engine (worker/grammar_masks.py) on CPU, with a tiny random
model over SmolLM2's tokenizer (its 49152 ids): every output matches its grammar, with
async scheduling and without (token for token the same), through chunked prompts and
preemption (a resumed request's matcher goes on where it was), beside unconstrained
requests whose tokens the masks must not touch (greedy: the same tokens after
preemption too), with more logits than tokens (xgrammar still taken), under tensor and pipeline parallelism, and with n-gram speculation on (the
constrained requests draft nothing, the others still do). No KV block may leak."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading

import jsonschema
import pytest
import torch

from tessera import LLM, SamplingParams

SCHEMA = {"type": "object", "properties": {
    "kind": {"enum": ["cat", "dog", "bird"]},
    "age": {"type": "integer", "minimum": 0, "maximum": 30},
    "ok": {"type": "boolean"}}, "required": ["kind", "age", "ok"], "additionalProperties": False}
GRAMMARS = [({"json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
            ({"regex": "[a-f]{2,6}-[0-9]{1,3}"},
             lambda t: re.fullmatch("[a-f]{2,6}-[0-9]{1,3}", t)),
            ({"choice": ["alpha", "beta", "gamma delta"]},
             lambda t: t in ("alpha", "beta", "gamma delta")),
            ({"grammar": 'root ::= "(" xy xy? xy? ")"\nxy ::= "x" | "y"'},
             lambda t: re.fullmatch(r"\([xy]{1,3}\)", t))]
PROMPTS = ["Describe an animal:", "A code: " * 6, "Pick one.", "Letters in parentheses"]
SETTINGS = {"async": {}, "sync": dict(async_scheduling=False),
            "preemption": dict(num_blocks=14, block_size=4, max_num_batched_tokens=24)}


def tiny_with_smollm_tokenizer(tmp_path_factory, vocab_size: int) -> str:
    """A tiny random Llama of vocab_size logits with SmolLM2's tokenizer files."""
    import transformers

    from tessera.default_model import default_model_path
    from tessera.frontend.gguf_tokenizer import exported_tokenizer_dir
    from tests.conftest import TINY
    folder = tmp_path_factory.mktemp(f"tiny-smollm-vocab-{vocab_size}")
    torch.manual_seed(7)
    cfg = transformers.LlamaConfig(**{**TINY, "vocab_size": vocab_size, "eos_token_id": 2,
                                      "bos_token_id": 1})
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer = exported_tokenizer_dir(default_model_path())  # the GGUF's, as HF files
    for name in os.listdir(tokenizer):
        shutil.copy(os.path.join(tokenizer, name), folder)
    return str(folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random Llama with SmolLM2's vocabulary (49152 ids) and tokenizer files."""
    return tiny_with_smollm_tokenizer(tmp_path_factory, 49152)


def run(model, prompts, params, **kw):
    llm = LLM(model, dtype="float32", **{"num_blocks": 64, "block_size": 8, **kw})
    outs = llm.generate(prompts, params)
    stats = llm.engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert stats["free_blocks"] == stats["num_blocks"], stats
    return [o.outputs[0] for o in outs], stats


def _params(temperature):
    return [SamplingParams(max_tokens=32, temperature=temperature, seed=i,
                           structured_outputs=g) for i, (g, _) in enumerate(GRAMMARS)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_outputs_match_their_grammars_in_every_setting(model, temperature):
    texts = {}
    for name, kw in SETTINGS.items():
        outs, stats = run(model, PROMPTS * 3, _params(temperature) * 3, **kw)
        for out, (_, check) in zip(outs, GRAMMARS * 3):
            assert out.finish_reason == "stop", (name, out.text)
            assert check(out.text), (name, out.text)
        texts[name] = [o.token_ids for o in outs]
        if name == "preemption":
            assert stats["preemptions"] > 0
    assert texts["async"] == texts["sync"]
    if temperature == 0:  # seeded draws are not preemption-invariant (a known gap)
        assert texts["preemption"] == texts["async"]


@pytest.mark.parametrize("async_scheduling,feed_in_background",
                         [(True, False), (True, True), (False, False)])
def test_masks_are_filled_while_the_engine_works_on_the_step_before(
        model, async_scheduling, feed_in_background, monkeypatch):
    """With async scheduling the masks of a step are filled on a helper thread from the
    moment the tokens before them are known (the runner's sampling of that step waits
    for them: `wait`), the matchers fed there too with FEED_IN_BACKGROUND; stepping
    synchronously, they are filled in place (no wait)."""
    from tessera.worker import grammar_masks
    monkeypatch.setattr(grammar_masks, "FEED_IN_BACKGROUND", feed_in_background)
    fed_on = set()
    advance = grammar_masks.GrammarMasks._advance
    monkeypatch.setattr(grammar_masks.GrammarMasks, "_advance", lambda self, rows: (
        fed_on.add(threading.current_thread().name.split("_")[0]), advance(self, rows))[1])
    llm = LLM(model, dtype="float32", num_blocks=64, block_size=8,
              async_scheduling=async_scheduling)
    masks = llm.engine.core.executor.runner.grammars
    outs = llm.generate(PROMPTS * 2, _params(0.0) * 2)
    for out, (_, check) in zip(outs, GRAMMARS * 2):
        assert check(out.outputs[0].text), out.outputs[0].text
    assert len(masks.timings["fill"]) > 0
    assert (len(masks.timings["wait"]) > 0) == async_scheduling
    assert ("grammar-fill" in fed_on) == feed_in_background  # several rows a step: there


@pytest.mark.parametrize("backend", ["auto", "llguidance"])
def test_json_schemas_through_either_library(model, backend, monkeypatch):
    """auto: xgrammar makes the masks of the schemas it enforces soundly (the JSON rows
    here, on its threads however few), llguidance the rest; llguidance: all of them.
    Every output matches."""
    from tessera.worker import grammar_masks
    monkeypatch.setattr(grammar_masks, "ROWS_FOR_THREADS", 2)
    pools = []
    fill = grammar_masks.fill_masks
    monkeypatch.setattr(grammar_masks, "fill_masks",
                        lambda pool, rows, mask: pools.append(pool) or fill(pool, rows, mask))
    llm = LLM(model, dtype="float32", num_blocks=64, block_size=8,
              structured_outputs_backend=backend)
    masks = llm.engine.core.executor.runner.grammars
    outs = llm.generate(PROMPTS * 2, _params(1.0) * 2)
    for out, (_, check) in zip(outs, GRAMMARS * 2):
        assert out.outputs[0].finish_reason == "stop", out.outputs[0].text
        assert check(out.outputs[0].text), out.outputs[0].text
    assert masks.schema_library == ("xgrammar" if backend == "auto" else "llguidance")
    if backend == "auto":  # some steps filled two JSON rows at once, on xgrammar's threads
        assert any(pool is masks._xgrammar_pools[1] for pool in pools)
    with pytest.raises(ValueError, match="structured_outputs_backend"):
        LLM(model, dtype="float32", structured_outputs_backend="outlines")


def test_xgrammar_kept_where_the_logits_outnumber_the_tokens(tmp_path_factory):
    """64 logits past the tokenizer's ids (as Qwen2.5's 151665 tokens of 151936 logits):
    xgrammar still makes the JSON masks, and no output holds an id past the tokenizer."""
    padded = tiny_with_smollm_tokenizer(tmp_path_factory, 49152 + 64)
    llm = LLM(padded, dtype="float32", num_blocks=64, block_size=8)
    masks = llm.engine.core.executor.runner.grammars
    params = [SamplingParams(max_tokens=32, temperature=1.0, seed=i,
                             structured_outputs={"json": SCHEMA}) for i in range(4)]
    outs = llm.generate(PROMPTS, params)
    assert masks.schema_library == "xgrammar"
    for out in outs:
        assert out.outputs[0].finish_reason == "stop", out.outputs[0].text
        jsonschema.validate(json.loads(out.outputs[0].text), SCHEMA)
        assert max(out.outputs[0].token_ids) < 49152


def test_unconstrained_rows_are_untouched(model):
    plain = [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
             SamplingParams(max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)]
    alone, _ = run(model, ["one two", "three four"], plain)
    mixed, _ = run(model, ["one two", *PROMPTS, "three four"],
                   [plain[0], *_params(0.0), plain[1]])
    assert [o.token_ids for o in alone] == [mixed[0].token_ids, mixed[-1].token_ids]


def test_with_ngram_speculation(model):
    spec = dict(method="ngram", num_speculative_tokens=3, speculative_adaptive=False)
    repeat = "a b c a b c a b c a b c"
    params = [*_params(0.0), SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)]
    outs, stats = run(model, [*PROMPTS, repeat], params, speculative_config=spec)
    for out, (_, check) in zip(outs, GRAMMARS):
        assert check(out.text), out.text
    plain, _ = run(model, [repeat], params[-1:])
    assert outs[-1].token_ids == plain[0].token_ids
    assert stats["spec_drafted"] > 0


def test_a_bad_grammar_is_refused_before_the_engine(model):
    llm = LLM(model, dtype="float32", num_blocks=16, block_size=8)
    with pytest.raises(ValueError, match="uniqueItems"):
        llm.generate(["x"], SamplingParams(structured_outputs={"json": {
            "type": "array", "uniqueItems": True}}))
    assert llm.generate(["x"], SamplingParams(max_tokens=3, structured_outputs={
        "choice": ["yes"]}))[0].outputs[0].text == "yes"


@pytest.mark.parametrize("layout", [dict(tensor_parallel_size=2),
                                    dict(pipeline_parallel_size=2)], ids=["tp2", "pp2"])
def test_under_model_parallelism(model, layout):
    """TP=2 (gloo, a worker process per rank, each with its own matchers) and PP=2 (two
    micro-batches in flight, the last stage's matchers): the same tokens as one process,
    greedy and seeded-sampled, every output matching."""
    params = _params(0.0) + _params(1.0)
    one, _ = run(model, PROMPTS * 2, params)
    llm = LLM(model, dtype="float32", num_blocks=64, block_size=8, **layout)
    try:
        outs = llm.generate(PROMPTS * 2, params)
        assert [o.outputs[0].token_ids for o in outs] == [o.token_ids for o in one]
        for out, (_, check) in zip(outs, GRAMMARS * 2):
            assert check(out.outputs[0].text), out.outputs[0].text
        assert llm.engine.stats()["free_blocks"] == 64
    finally:
        llm.engine.executor.shutdown()
