"""The engine end to end on CPU: sampling behaviour, stops, n > 1, aborts, bad input.

Text-level features (stop strings, detokenization) use the real default model; the rest
uses a tiny random Llama with token-id prompts. After every test the KV pool must be
whole again: no leaked blocks, whatever finished, stopped or was aborted.
"""
from __future__ import annotations

import json
import os

import pytest

from tessera import LLM, SamplingParams
from tessera.engine.request import Request


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    folder, _ = tiny_llama
    return LLM(folder, skip_tokenizer_init=True, num_blocks=64, block_size=8,
               max_num_batched_tokens=32)


@pytest.fixture(scope="module")
def smol():
    return LLM(num_blocks=256)


def assert_no_leak(llm):
    stats = llm.engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert stats["free_blocks"] == stats["num_blocks"], stats


def ids(out):
    return out.outputs[0].token_ids


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny):
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=24, ignore_eos=True)
    alone = tiny.generate({"prompt_token_ids": [3, 4, 5]}, p)[0]
    others = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)
    mixed = tiny.generate([{"prompt_token_ids": [9] * 20}, {"prompt_token_ids": [3, 4, 5]},
                           {"prompt_token_ids": [1, 2]}], [others, p, others])
    assert ids(mixed[1]) == ids(alone)
    other_seed = tiny.generate({"prompt_token_ids": [3, 4, 5]}, p.clone(seed=8))[0]
    assert ids(other_seed) != ids(alone)
    assert_no_leak(tiny)


def test_n_samples_differ_and_are_reproducible(tiny):
    p = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=16, ignore_eos=True)
    a = tiny.generate({"prompt_token_ids": [5, 6, 7]}, p)[0]
    b = tiny.generate({"prompt_token_ids": [5, 6, 7]}, p)[0]
    assert [o.index for o in a.outputs] == [0, 1, 2]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len({tuple(o.token_ids) for o in a.outputs}) == 3
    assert_no_leak(tiny)


def test_max_min_tokens_and_stop_token_ids(tiny):
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    base = ids(tiny.generate({"prompt_token_ids": [8, 9]}, greedy)[0])
    stop_tok = base[5]
    first = base.index(stop_tok)
    out = tiny.generate({"prompt_token_ids": [8, 9]},
                        greedy.clone(stop_token_ids=[stop_tok]))[0].outputs[0]
    assert out.token_ids == base[:first + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_tok)
    out = tiny.generate({"prompt_token_ids": [8, 9]},
                        greedy.clone(stop_token_ids=[stop_tok], min_tokens=first + 3))[0]
    assert len(ids(out)) >= first + 3  # min_tokens holds the stop back (and bans it)
    assert stop_tok not in ids(out)[:first + 2]
    out = tiny.generate({"prompt_token_ids": [8, 9]}, greedy.clone(max_tokens=7))[0].outputs[0]
    assert (len(out.token_ids), out.finish_reason) == (7, "length")
    assert_no_leak(tiny)


def test_abort_at_any_point_frees_blocks(tiny):
    engine = tiny.engine
    p = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"abort-{i}", {"prompt_token_ids": list(range(1, 40))}, p)
    engine.abort_request(["abort-0"])  # still waiting
    engine.step()
    engine.step()  # abort-1.. are mid-prefill or decoding now
    assert engine.stats()["free_blocks"] < engine.stats()["num_blocks"]
    engine.abort_request(["abort-1", "abort-2"])
    for _ in range(3):
        engine.step()
    engine.abort_request(["abort-3", "not-a-request"])
    while engine.has_unfinished_requests():
        engine.step()
    assert_no_leak(tiny)


def test_bad_input_is_refused_and_disturbs_nothing(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_model_len=48)
    with pytest.raises(ValueError, match="maximum context length is 48 tokens"):
        llm.generate([{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3] * 60}])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate({"prompt_token_ids": [1, 10**6]})
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []})
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="stop_token_ids 1000000000 is outside the vocab"):
        llm.generate({"prompt_token_ids": [1, 2]},  # min_tokens indexes logits with it
                     SamplingParams(min_tokens=1, stop_token_ids=[10**9]))
    core = llm.engine.core  # the core checks what reaches it on its own (frames from the API)
    with pytest.raises(ValueError, match="stop_token_ids 384 is outside"):
        core.add_request(Request("direct", [1, 2], SamplingParams(stop_token_ids=[384])))
    with pytest.raises(ValueError, match="prompt token id -1 is outside"):
        core.add_request(Request("direct", [1, -1], SamplingParams()))
    assert_no_leak(llm)  # the valid first prompt of the refused batch was never queued
    out = llm.generate({"prompt_token_ids": [1, 2]},
                       SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length" and len(ids(out)) == 46  # context end


def test_model_errors_say_what_is_wrong(tmp_path, tiny_llama):
    folder, _ = tiny_llama
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="No config.json"):
        LLM(str(tmp_path))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    bad = tmp_path / "gpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPTBigFoo"]}))
    with pytest.raises(ValueError, match="GPTBigFoo.*not supported. Supported: LlamaForCausalLM"):
        LLM(str(bad))
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(cfg))
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="No \\*.safetensors.*pickle"):
        LLM(str(empty), skip_tokenizer_init=True)
    with pytest.raises(ValueError, match="dtype 'float8'"):
        LLM(folder, dtype="float8")
    with pytest.raises(FileNotFoundError, match="llama-3-8b.*load_format='dummy'"):
        LLM("llama-3-8b")


def test_dummy_weights_for_a_named_shape():
    llm = LLM("smollm2-135m", load_format="dummy", num_blocks=16)
    out = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=5))[0]
    assert len(ids(out)) == 5 and llm.engine.tokenizer is None


def test_stop_strings_truncate_text(smol):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    full = smol.chat(msgs, SamplingParams(temperature=0, max_tokens=32))[0].outputs[0].text
    assert "Paris" in full
    out = smol.chat(msgs, SamplingParams(temperature=0, max_tokens=32, stop=["Paris"]))[0]
    c = out.outputs[0]
    assert c.text == full[:full.index("Paris")]
    assert (c.finish_reason, c.stop_reason) == ("stop", "Paris")
    keep = smol.chat(msgs, SamplingParams(temperature=0, max_tokens=32, stop=["Paris"],
                                          include_stop_str_in_output=True))[0].outputs[0]
    assert keep.text == full[:full.index("Paris") + len("Paris")]
    assert_no_leak(smol)


def test_multibyte_text_and_logprobs(smol):
    out = smol.generate("Translate to Japanese: Good morning ->",
                        SamplingParams(temperature=0, max_tokens=24, logprobs=3))[0].outputs[0]
    tok = smol.get_tokenizer()
    assert out.text == tok.decode(out.token_ids, skip_special_tokens=True)
    assert "\ufffd" not in out.text or "\ufffd" in tok.decode(out.token_ids)
    for t, entry in zip(out.token_ids, out.logprobs):
        assert t in entry and len(entry) >= 3
        assert entry[t].rank == 1  # greedy picks the top token
    assert abs(out.cumulative_logprob - sum(e[t].logprob for t, e in
                                           zip(out.token_ids, out.logprobs))) < 1e-4
