"""Speculative decoding end to end on CPU (spec_decode/): exact against plain decoding.

Greedy output must be token for token what the engine gives without speculation, with
each proposer: the target as its own draft (every draft must be accepted), a smaller
random draft (most are rejected: the rollback paths run), n-gram lookup; and with the
scheduler forced to chunk prompts, to preempt, and with aborts mid-step. Sampled output
must follow the target's distribution (a chi-square test on a tiny model). No KV block
may leak. Bad settings are refused at start with a message that names them.
"""
from __future__ import annotations

import collections

import pytest
import torch

from tessera import LLM, SamplingParams

PROMPTS = [[5, 6, 7, 8, 9, 10, 5, 6, 7], list(range(3, 40)), [11, 12] * 9, [100]]
SETTINGS = {
    "default": dict(num_blocks=64, block_size=8),
    "chunked": dict(num_blocks=64, block_size=8, max_num_batched_tokens=12),
    "preemption": dict(num_blocks=24, block_size=4, max_num_batched_tokens=64),
}


@pytest.fixture(scope="module")
def small_draft(tmp_path_factory):
    """A random draft much smaller than the tiny target, same vocabulary."""
    import transformers

    from tests.conftest import TINY
    folder = str(tmp_path_factory.mktemp("tiny-draft"))
    torch.manual_seed(99)
    cfg = transformers.LlamaConfig(**{**TINY, "num_hidden_layers": 1, "hidden_size": 32,
                                      "intermediate_size": 64, "num_attention_heads": 2,
                                      "num_key_value_heads": 1})
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def run(folder, prompts, params, **kw):
    llm = LLM(folder, skip_tokenizer_init=True, dtype="float32", **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    stats = llm.engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert stats["free_blocks"] == stats["num_blocks"], stats  # no block leaked
    return [[o.token_ids for o in out.outputs] for out in outs], stats, llm


def spec_config(kind, folder, draft):
    """Drafts every step (adaptivity off: with it, drafts that cost as much as the model
    itself, or that rarely come true, would rightly be switched off)."""
    if kind == "ngram":
        return dict(method="ngram", num_speculative_tokens=3, speculative_adaptive=False)
    return dict(model=folder if kind == "self" else draft, num_speculative_tokens=4,
                speculative_adaptive=False)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", ["self", "small", "ngram"])
def test_greedy_output_is_exactly_plain_decoding(tiny_llama, small_draft, kind, setting):
    folder, _ = tiny_llama
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    kw = SETTINGS[setting]
    plain, _, _ = run(folder, PROMPTS, params, **kw)
    spec, stats, _ = run(folder, PROMPTS, params, **kw,
                         speculative_config=spec_config(kind, folder, small_draft))
    assert spec == plain
    assert stats["spec_drafted"] > 0
    if kind == "self":  # the target drafting for itself: every draft is right
        assert stats["spec_accepted"] == stats["spec_drafted"]
        if setting == "default":  # 40 steps without drafts; with 4, ~40 / 5 + prefill
            assert stats["steps"] <= 12, stats
    if setting == "preemption":
        assert stats["preemptions"] > 0


def test_request_settings_behave_as_without_speculation(tiny_llama, small_draft):
    """Stop ids, min_tokens, penalties, max_tokens, n > 1 and logprobs, greedy."""
    folder, _ = tiny_llama
    base = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    plain_ids = run(folder, PROMPTS[:1], base, num_blocks=64)[0][0][0]
    cases = [base.clone(stop_token_ids=[plain_ids[6]]),
             base.clone(stop_token_ids=[plain_ids[6]], min_tokens=10),
             base.clone(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2),
             base.clone(max_tokens=5),
             base.clone(n=2, seed=3),
             base.clone(logprobs=3)]
    for params in cases:
        plain, _, plain_llm = run(folder, PROMPTS, params, num_blocks=64)
        spec, stats, spec_llm = run(folder, PROMPTS, params, num_blocks=64,
                                    speculative_config=spec_config("small", folder,
                                                                   small_draft))
        assert spec == plain, params
    a = plain_llm.generate({"prompt_token_ids": PROMPTS[1]}, params)[0].outputs[0]
    b = spec_llm.generate({"prompt_token_ids": PROMPTS[1]}, params)[0].outputs[0]
    assert a.token_ids == b.token_ids
    for x, y in zip(a.logprobs, b.logprobs):
        assert x.keys() == y.keys()
        for tok in x:
            assert abs(x[tok].logprob - y[tok].logprob) < 1e-4


def test_aborts_mid_speculation_free_every_block(tiny_llama, small_draft):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, dtype="float32", num_blocks=32, block_size=4,
              speculative_config=spec_config("small", folder, small_draft))
    engine = llm.engine
    p = SamplingParams(temperature=0.8, seed=1, max_tokens=60, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"a{i}", {"prompt_token_ids": PROMPTS[i % 4]}, p)
    for _ in range(3):
        engine.step()
    engine.abort_request(["a0", "a2"])
    engine.step()
    engine.abort_request(["a1"])
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.stats()
    assert stats["free_blocks"] == stats["num_blocks"], stats
    assert stats["spec_drafted"] > 0


CHI2_999 = {3: 16.27, 4: 18.47}


def test_sampled_tokens_follow_the_targets_distribution(tiny_llama, small_draft):
    """The second token (the first a verify step gives) given the most common first:
    counts over 1600 seeded requests against the target's own top-5 distribution."""
    folder, hf = tiny_llama
    prompt = [7, 8, 9, 10]
    params = [SamplingParams(temperature=1.0, top_k=5, seed=s, max_tokens=3, ignore_eos=True)
              for s in range(1600)]
    llm = LLM(folder, skip_tokenizer_init=True, dtype="float32", num_blocks=2048, block_size=4,
              max_num_seqs=256, speculative_config=dict(
                  model=small_draft, num_speculative_tokens=2, speculative_max_batch=256,
                  speculative_adaptive=False))
    outs = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": prompt}] *
                                                          len(params), params)]
    stats = llm.engine.stats()
    assert stats["spec_drafted"] > 1000 and 0 < stats["spec_accepted"] < stats["spec_drafted"]
    first = collections.Counter(o[0] for o in outs).most_common(1)[0][0]
    second = [o[1] for o in outs if o[0] == first]
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + [first]])).logits[0, -1].float()
    top = logits.topk(5)
    probs = torch.softmax(top.values, dim=-1)
    counts = torch.tensor([second.count(int(t)) for t in top.indices], dtype=torch.float32)
    assert counts.sum() == len(second)  # nothing outside the top 5
    expected = probs * len(second)
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < CHI2_999[4], (stat, counts.tolist(), expected.tolist())


def test_bad_settings_are_refused_at_start(tiny_llama, tmp_path):
    import transformers

    from tests.conftest import TINY
    folder, _ = tiny_llama
    other = str(tmp_path / "other-vocab")
    transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(
        **{**TINY, "vocab_size": 500, "num_hidden_layers": 1})).save_pretrained(other)
    with pytest.raises(ValueError, match="vocabulary of 500 tokens"):
        LLM(folder, skip_tokenizer_init=True, dtype="float32", num_blocks=8,
            speculative_model=other)
    with pytest.raises(ValueError, match="num_speculative_tokens must be in 1..16"):
        LLM(folder, skip_tokenizer_init=True, dtype="float32", speculative_config=dict(
            method="ngram", num_speculative_tokens=0))
    with pytest.raises(ValueError, match="'ngram' drafts without a model"):
        LLM(folder, skip_tokenizer_init=True, dtype="float32", speculative_config=dict(
            method="ngram", model=folder))
    with pytest.raises(TypeError, match="unknown speculative_config key 'k'"):
        LLM(folder, skip_tokenizer_init=True, dtype="float32", speculative_config=dict(k=3))
    with pytest.raises(ValueError, match="pipeline stages"):
        LLM(folder, skip_tokenizer_init=True, dtype="float32", pipeline_parallel_size=2,
            speculative_method="ngram")


def test_batches_above_the_limit_step_as_without_speculation(tiny_llama, small_draft):
    """speculative_max_batch 2 with 4 requests: async plain steps while more than 2 run,
    speculation once the batch shrinks; output still exactly plain decoding's."""
    folder, _ = tiny_llama
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True)
              for m in (8, 12, 40, 40)]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = LLM(folder, skip_tokenizer_init=True, dtype="float32",
                num_blocks=64).generate(prompts, params)
    llm = LLM(folder, skip_tokenizer_init=True, dtype="float32", num_blocks=64,
              speculative_config=dict(
        model=small_draft, num_speculative_tokens=3, speculative_max_batch=2,
        speculative_adaptive=False))
    spec = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in plain]
    core = llm.engine.core
    assert core.max_in_flight == 2  # the large batch overlapped its steps
    assert core.stats()["spec_drafted"] > 0  # the small one speculated
    assert core.stats()["free_blocks"] == core.num_blocks


def test_stop_strings_and_text_as_without_speculation():
    """The default model with n-gram drafts: several tokens arrive per step, and the
    output processor's stop strings and detokenization cut them as it does one by one."""
    prompt = ("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
              "def add(a, b):\n")
    params = [SamplingParams(temperature=0, max_tokens=40),
              SamplingParams(temperature=0, max_tokens=40, stop=["a - b"]),
              SamplingParams(temperature=0, max_tokens=40, stop=["\n\n"],
                             include_stop_str_in_output=True)]
    plain = LLM(num_blocks=64).generate([prompt] * 3, params)
    llm = LLM(num_blocks=64, speculative_config=dict(method="ngram", num_speculative_tokens=4,
                                                     speculative_adaptive=False))
    spec = llm.generate([prompt] * 3, params)
    for a, b in zip(plain, spec):
        assert (b.outputs[0].text, b.outputs[0].finish_reason, b.outputs[0].stop_reason) == (
            a.outputs[0].text, a.outputs[0].finish_reason, a.outputs[0].stop_reason)
    assert llm.engine.stats()["spec_accepted"] > 0  # the code repeats: drafts come true
