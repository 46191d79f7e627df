"""Unit tests for incremental detokenization, stop strings and the OutputProcessor.

A small byte-level BPE tokenizer is trained in a module fixture (well under a second)
instead of loading a real checkpoint's tokenizer; with only ~300 ids most non-ASCII
characters (é, 你, 🙂) span several tokens, which is what the detokenizer must handle.
"""
from __future__ import annotations

import pytest

from tessera.frontend.detokenizer import (IncrementalDetokenizer, StreamDetokenizer, find_stop,
                                          make_detokenizer, streams_exactly)
from tessera.frontend.output import OutputProcessor
from tessera.engine.protocol import EngineCoreOutput
from tessera.outputs import Logprob
from tessera.sampling_params import SamplingParams

EOT = "<|endoftext|>"
CORPUS = [
    "Hello world, this is a small test.",
    "héllo wörld 你好 🙂🚀",
    "The quick brown fox jumps over the lazy dog.",
    "Stop here: ### and there. END",
    "naïve café déjà vu",
    "数据 模型 推理 引擎",
] * 3

TEXTS = [
    "Hello world",
    "héllo wörld 你好 🙂🚀",
    "naïve café — déjà vu 数据模型",
    "🙂🚀🙂 emoji 🚀",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and\nnew lines\t tabs ",
    "Ünïcödé 引擎 ok",
]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT,
                                   clean_up_tokenization_spaces=False)


@pytest.fixture(params=[IncrementalDetokenizer, StreamDetokenizer])
def detokenizer(request):
    """Both detokenizers: the tests below hold for each (StreamDetokenizer runs tokenizers'
    DecodeStream; IncrementalDetokenizer decodes a window per token)."""
    return request.param


@pytest.fixture
def stream(detokenizer):
    def run(tokenizer, prompt_ids: list[int], ids: list[int],
            skip_special_tokens: bool = True) -> tuple[list[str], str]:
        detok = detokenizer(tokenizer, prompt_ids, skip_special_tokens)
        deltas = [detok.add_token(t) for t in ids]
        return deltas, detok.flush()
    return run


# -- the tokenizer fixture itself ------------------------------------------------------------

def test_fixture_splits_multibyte_characters_across_tokens(tokenizer):
    ids = tokenizer.encode("你好 🙂🚀")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # otherwise the tests below prove little
    assert tokenizer.decode(ids) == "你好 🙂🚀"


# -- IncrementalDetokenizer -----------------------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("prompt", ["", "Prompt: 你好 ", "x🙂🚀"])
def test_deltas_concatenate_to_full_decode(stream, tokenizer, text, prompt):
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    ids = tokenizer.encode(text)
    deltas, tail = stream(tokenizer, prompt_ids, ids)
    assert "".join(deltas) + tail == tokenizer.decode(ids)
    assert "".join(deltas) + tail == text
    assert tail == ""  # complete text: nothing is left for flush


@pytest.mark.parametrize("text", TEXTS)
def test_no_delta_contains_replacement_character(stream, tokenizer, text):
    ids = tokenizer.encode(text)
    deltas, tail = stream(tokenizer, tokenizer.encode("你好"), ids)
    assert all("\ufffd" not in d for d in deltas + [tail])


@pytest.mark.parametrize("text", TEXTS)
def test_text_is_emitted_on_character_boundaries_as_soon_as_complete(detokenizer, tokenizer,
                                                                     text):
    ids = tokenizer.encode(text)
    detok = detokenizer(tokenizer, [])
    so_far = ""
    for k, t in enumerate(ids, start=1):
        so_far += detok.add_token(t)
        # Never part of a character: what has been emitted is a prefix of the final text...
        assert text.startswith(so_far)
        decoded = tokenizer.decode(ids[:k])
        if not decoded.endswith("\ufffd"):
            # ...and nothing complete is held back.
            assert so_far == decoded


def test_split_character_is_held_back_until_complete(stream, tokenizer):
    ids = tokenizer.encode("🙂")
    assert len(ids) > 1
    deltas, tail = stream(tokenizer, [], ids)
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == "🙂" and tail == ""


def test_prompt_window_starting_inside_a_character(stream, tokenizer):
    # The detokenizer keeps only the last 5 prompt tokens; here they begin in the middle
    # of a 4-byte emoji, so its context decodes with replacement characters.
    prompt_ids = tokenizer.encode("a🙂🚀🙂")
    assert "\ufffd" in tokenizer.decode(prompt_ids[-5:])
    ids = tokenizer.encode(" ok 你好")
    deltas, tail = stream(tokenizer, prompt_ids, ids)
    assert "".join(deltas) + tail == " ok 你好"


def test_prompt_ending_inside_a_character_gives_none_of_its_text(stream, tokenizer):
    """A token-id prompt may stop mid-character: its text stays the prompt's (it once
    came out at the head of the first output delta)."""
    emoji = tokenizer.encode("🙂")
    prompt_ids = tokenizer.encode("say hi") + emoji[:-1]
    ids = tokenizer.encode(" ok")
    deltas, tail = stream(tokenizer, prompt_ids, ids)
    assert "".join(deltas) + tail == " ok"


def test_flush_returns_a_dangling_partial_character(stream, tokenizer):
    ids = tokenizer.encode("ab你")
    partial = ids[:-1]  # the last byte(s) of 你 never arrive
    assert tokenizer.decode(partial).endswith("\ufffd")
    deltas, tail = stream(tokenizer, [], partial)
    assert "".join(deltas) == "ab"
    assert tail == tokenizer.decode(partial)[len("ab"):]
    assert tail.endswith("\ufffd")


def test_special_tokens_skipped_or_kept(stream, tokenizer):
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids = tokenizer.encode("Hi") + [eot]
    deltas, tail = stream(tokenizer, [], ids, skip_special_tokens=True)
    assert "".join(deltas) + tail == "Hi"
    assert deltas[-1] == ""
    deltas, tail = stream(tokenizer, [], ids, skip_special_tokens=False)
    assert "".join(deltas) + tail == "Hi" + EOT


def test_fast_tokenizers_stream_and_cleaning_ones_do_not(tokenizer):
    """A fast tokenizer that decodes as its backend gets the DecodeStream; one that cleans
    spaces up on top of its backend ("Hello ," -> "Hello,") keeps the window decoder."""
    assert streams_exactly(tokenizer)
    assert isinstance(make_detokenizer(tokenizer, [], True), StreamDetokenizer)
    from transformers import PreTrainedTokenizerFast
    cleaning = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                       eos_token=EOT, clean_up_tokenization_spaces=True)
    cleaning.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    if cleaning.decode(cleaning.encode("Hello , world")) == "Hello, world":  # it cleans
        assert not streams_exactly(cleaning)
        assert isinstance(make_detokenizer(cleaning, [], True), IncrementalDetokenizer)


# -- find_stop ------------------------------------------------------------------------------------

def test_find_stop_earliest_of_several():
    text = "abc STOP def END ghi"
    assert find_stop(text, 0, ["END", "STOP"]) == (4, "STOP")
    assert find_stop(text, 0, ["STOP", "END"]) == (4, "STOP")
    assert find_stop(text, 0, ["zzz"]) is None
    assert find_stop(text, 0, []) is None


def test_find_stop_overlapping_stops_prefers_earliest_start():
    assert find_stop("xxabcd", 0, ["bcd", "abc"]) == (2, "abc")


def test_find_stop_split_across_two_deltas():
    first = "hello ST"
    text = first + "OP and on"
    assert find_stop(first, 0, ["STOP"]) is None
    assert find_stop(text, len(first), ["STOP"]) == (6, "STOP")


def test_find_stop_respects_start_offset():
    text = "STOP then new STOP"
    # the first STOP ends before start: only the new one counts
    assert find_stop(text, 5, ["STOP"]) == (14, "STOP")
    # a stop that ends exactly at the first new character counts
    assert find_stop("abSTOPx", 5, ["STOP"]) == (2, "STOP")
    # one that ends just before it does not
    assert find_stop("abSTOPx", 6, ["STOP"]) is None


def test_find_stop_multibyte_stop_string():
    assert find_stop("好的，你好！", 4, ["你好"]) == (3, "你好")


# -- OutputProcessor ------------------------------------------------------------------------------

def core_outputs(rid: str, ids: list[int], finish_reason=None, stop_reason=None,
                 logprobs=None) -> list[EngineCoreOutput]:
    """One EngineCoreOutput per token; the last one carries the finish."""
    outs = []
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        outs.append(EngineCoreOutput(rid, [t], [logprobs[i]] if logprobs else [], [],
                                     finish_reason if last else None,
                                     stop_reason if last else None))
    return outs


def feed(proc: OutputProcessor, outs: list[EngineCoreOutput]):
    results, aborts = [], []
    for out in outs:
        r, a = proc.process([out])
        results.extend(r)
        aborts.extend(a)
    return results, aborts


def test_text_and_token_ids_stream_out(tokenizer):
    proc = OutputProcessor(tokenizer)
    prompt_ids = tokenizer.encode("Q:")
    proc.add_request("r", "Q:", prompt_ids, [("r", SamplingParams())])
    ids = tokenizer.encode(" héllo 你好")
    results, aborts = feed(proc, core_outputs("r", ids, "length"))
    assert aborts == []
    final = results[-1]
    assert final.finished and final.request_id == "r"
    assert final.prompt == "Q:" and final.prompt_token_ids == prompt_ids
    [c] = final.outputs
    assert c.text == " héllo 你好" and c.token_ids == ids
    assert c.finish_reason == "length" and c.stop_reason is None
    assert all(not r.finished for r in results[:-1])
    assert "r" not in proc.parents and "r" not in proc.trackers  # forgotten once finished


@pytest.mark.parametrize("include, expected", [(False, "Answer: 42 "), (True, "Answer: 42 ###")])
def test_stop_string_truncates_and_finishes(tokenizer, include, expected):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [1, 2], [("r", SamplingParams(
        stop=["###"], include_stop_str_in_output=include, max_tokens=100))])
    ids = tokenizer.encode("Answer: 42 ### and more text")
    results, aborts = feed(proc, core_outputs("r", ids))
    assert aborts == ["r"]  # the core must abort it: it did not finish there
    c = results[-1].outputs[0]
    assert c.text == expected
    assert c.finish_reason == "stop" and c.stop_reason == "###"
    assert results[-1].finished
    # outputs that arrive after the stop are ignored
    assert proc.process(core_outputs("r", tokenizer.encode(" late"))) == ([], [])


def test_stop_string_spanning_several_tokens_and_deltas(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [], [("r", SamplingParams(stop=["lazy dog"], max_tokens=100))])
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog. Then")
    results, aborts = feed(proc, core_outputs("r", ids))
    c = results[-1].outputs[0]
    assert c.text == "The quick brown fox jumps over the "
    assert (c.finish_reason, c.stop_reason) == ("stop", "lazy dog")
    assert aborts == ["r"]


def test_earliest_of_several_stop_strings_wins(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [], [("r", SamplingParams(stop=["END", "there"], max_tokens=99))])
    feed_ids = tokenizer.encode("Stop here: ### and there. END")
    results, _ = feed(proc, core_outputs("r", feed_ids))
    c = results[-1].outputs[0]
    assert c.text == "Stop here: ### and "
    assert c.stop_reason == "there"


def test_stop_string_on_the_cores_last_token_is_not_aborted_again(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [], [("r", SamplingParams(stop=["###"], max_tokens=4))])
    ids = tokenizer.encode("ab ###")
    results, aborts = feed(proc, core_outputs("r", ids, "length"))
    c = results[-1].outputs[0]
    assert (c.text, c.finish_reason, c.stop_reason) == ("ab ", "stop", "###")
    assert aborts == []  # the core already finished it


def test_core_finish_reason_and_stop_token_are_passed_through(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [], [("r", SamplingParams())])
    ids = tokenizer.encode("Hi")
    results, _ = feed(proc, core_outputs("r", ids, "stop", 123))
    c = results[-1].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", 123)


def test_n2_children_gathered_in_index_order(tokenizer):
    proc = OutputProcessor(tokenizer)
    params = SamplingParams(stop=["###"], max_tokens=50)
    proc.add_request("p", "prompt", [5], [("p-0", params), ("p-1", params)])
    assert proc.child_ids("p") == ["p-0", "p-1"]
    a, b = tokenizer.encode("first"), tokenizer.encode("second ### x")
    # child 1 runs ahead and stops on a string; child 0 is still going
    results, aborts = feed(proc, core_outputs("p-1", b))
    assert aborts == ["p-1"]  # the child's id, for the core to abort
    last = results[-1]
    assert last.request_id == "p" and not last.finished
    assert [c.index for c in last.outputs] == [0, 1]
    assert last.outputs[1].text == "second " and last.outputs[1].finish_reason == "stop"
    assert last.outputs[0].text == "" and last.outputs[0].finish_reason is None
    results, aborts = feed(proc, core_outputs("p-0", a, "length"))
    final = results[-1]
    assert final.finished
    assert [c.index for c in final.outputs] == [0, 1]
    assert [c.text for c in final.outputs] == ["first", "second "]
    assert [c.finish_reason for c in final.outputs] == ["length", "stop"]
    assert proc.parents == {} and proc.trackers == {}


def test_one_output_per_changed_parent_per_process_call(tokenizer):
    proc = OutputProcessor(tokenizer)
    params = SamplingParams()
    proc.add_request("p", None, [], [("p-0", params), ("p-1", params)])
    proc.add_request("q", None, [], [("q", params)])
    tok = tokenizer.encode("a")[0]
    results, _ = proc.process([EngineCoreOutput("p-1", [tok], [], []),
                               EngineCoreOutput("p-0", [tok], [], []),
                               EngineCoreOutput("q", [tok], [], [])])
    assert [r.request_id for r in results] == ["p", "q"]


def test_abort_forgets_parent_and_children(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("p", None, [], [("p-0", SamplingParams()), ("p-1", SamplingParams())])
    proc.abort("p")
    assert proc.parents == {} and proc.trackers == {}
    assert proc.child_ids("p") == []
    assert proc.process([EngineCoreOutput("p-0", [1], [], [])]) == ([], [])


def test_logprobs_converted_to_dicts_with_cumulative_sum(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [], [("r", SamplingParams(logprobs=2))])
    ids = tokenizer.encode("Hello")[:2]
    assert len(ids) == 2
    other = tokenizer.encode("z")[0]
    entries = [
        ([ids[0], ids[0], other], [-0.5, -0.5, -1.5], [1, 1, 2]),  # chosen is also top-1
        ([ids[1], other, ids[0]], [-2.25, -0.25, -1.0], [3, 1, 2]),
    ]
    results, _ = feed(proc, core_outputs("r", ids, "length", logprobs=entries))
    c = results[-1].outputs[0]
    assert c.cumulative_logprob == pytest.approx(-0.5 - 2.25)
    assert len(c.logprobs) == 2
    first, second = c.logprobs
    assert first == {ids[0]: Logprob(-0.5, 1, tokenizer.decode([ids[0]])),
                     other: Logprob(-1.5, 2, tokenizer.decode([other]))}
    assert list(second) == [ids[1], other, ids[0]]  # chosen token first
    assert second[ids[1]] == Logprob(-2.25, 3, tokenizer.decode([ids[1]]))
    assert second[other].rank == 1 and second[ids[0]].logprob == -1.0


def test_no_logprobs_requested_gives_none(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [], [("r", SamplingParams())])
    results, _ = feed(proc, core_outputs("r", tokenizer.encode("Hi"), "length"))
    c = results[-1].outputs[0]
    assert c.logprobs is None and c.cumulative_logprob is None


def test_prompt_logprobs_start_with_none(tokenizer):
    proc = OutputProcessor(tokenizer)
    proc.add_request("r", None, [7, 8, 9], [("r", SamplingParams(prompt_logprobs=1))])
    prompt_entries = [([8, 8], [-0.1, -0.1], [1, 1]), ([9, 4], [-3.0, -0.2], [2, 1])]
    out = EngineCoreOutput("r", [tokenizer.encode("a")[0]], [], prompt_entries, "length")
    [result], _ = proc.process([out])
    assert result.prompt_logprobs[0] is None
    assert result.prompt_logprobs[1] == {8: Logprob(-0.1, 1, tokenizer.decode([8]))}
    assert list(result.prompt_logprobs[2]) == [9, 4]
    assert result.prompt_logprobs[2][9].rank == 2


def test_final_only_parent_reports_once_at_the_end():
    """A parent added with stream=False yields no output until its last child finishes."""
    op = OutputProcessor(None)
    params = SamplingParams(max_tokens=3)
    op.add_request("p", None, [1, 2], [("p-0", params), ("p-1", params)], stream=False)
    assert op.process([EngineCoreOutput("p-0", [5], [], [])])[0] == []
    assert op.process([EngineCoreOutput("p-0", [6], [], [], finish_reason="length")])[0] == []
    outs, _ = op.process([EngineCoreOutput("p-1", [7], [], [], finish_reason="stop")])
    assert len(outs) == 1 and outs[0].finished
    assert [c.token_ids for c in outs[0].outputs] == [[5, 6], [7]]
