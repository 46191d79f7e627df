"""Unit tests for SamplingParams validation and normalization.

Each invalid value must raise ValueError whose message names the offending field, so
the server can answer HTTP 400 with a useful message.
"""
import pytest

from tessera.sampling_params import SamplingParams


@pytest.mark.parametrize("field, kwargs", [
    ("temperature", {"temperature": -0.1}),
    ("top_p", {"top_p": 0.0}),
    ("top_p", {"top_p": 1.01}),
    ("top_p", {"top_p": -0.5}),
    ("top_k", {"top_k": -2}),
    ("top_k", {"top_k": 2.5}),
    ("min_p", {"min_p": 1.5}),
    ("min_p", {"min_p": -0.1}),
    ("presence_penalty", {"presence_penalty": 2.5}),
    ("presence_penalty", {"presence_penalty": -2.01}),
    ("frequency_penalty", {"frequency_penalty": 3.0}),
    ("frequency_penalty", {"frequency_penalty": -2.5}),
    ("repetition_penalty", {"repetition_penalty": 0.0}),
    ("repetition_penalty", {"repetition_penalty": -1.0}),
    ("max_tokens", {"max_tokens": 0}),
    ("max_tokens", {"max_tokens": -3}),
    ("max_tokens", {"max_tokens": 2.0}),
    ("min_tokens", {"min_tokens": -1}),
    ("min_tokens", {"min_tokens": 10, "max_tokens": 5}),
    ("logprobs", {"logprobs": 21}),
    ("logprobs", {"logprobs": -1}),
    ("prompt_logprobs", {"prompt_logprobs": -1}),
    ("prompt_logprobs", {"prompt_logprobs": 21}),
    ("n", {"n": 0}),
    ("n", {"n": -1}),
    ("n", {"n": 1.5}),
    ("seed", {"seed": "abc"}),
    ("stop", {"stop": [""]}),
    ("stop", {"stop": ""}),
    ("stop", {"stop": ["ok", ""]}),
    ("stop", {"stop": [3]}),
    ("stop_token_ids", {"stop_token_ids": [-1]}),
    ("stop_token_ids", {"stop_token_ids": [5, -7]}),
    ("stop_token_ids", {"stop_token_ids": ["5"]}),
    # issue 17: booleans are not integers, integers stay below 2^31, floats are finite
    ("max_tokens", {"max_tokens": True}),
    ("logprobs", {"logprobs": True}),
    ("prompt_logprobs", {"prompt_logprobs": False}),
    ("top_k", {"top_k": 2**63}),
    ("max_tokens", {"max_tokens": 2**64}),
    ("min_tokens", {"min_tokens": 2**31, "max_tokens": None}),
    ("n", {"n": 2**40}),
    ("stop_token_ids", {"stop_token_ids": [2**64]}),
    ("temperature", {"temperature": float("nan")}),
    ("temperature", {"temperature": float("inf")}),
    ("top_p", {"top_p": float("nan")}),
    ("repetition_penalty", {"repetition_penalty": float("inf")}),
    ("repetition_penalty", {"repetition_penalty": 10**400}),
    ("presence_penalty", {"presence_penalty": float("nan")}),
], ids=lambda v: repr(v) if isinstance(v, dict) else v)
def test_invalid_value_raises_value_error_naming_the_field(field, kwargs):
    with pytest.raises(ValueError) as info:
        SamplingParams(**kwargs)
    assert field in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {"temperature": 0.0},
    {"temperature": 5.0},
    {"top_p": 1.0},
    {"top_p": 1e-6},
    {"top_k": 0},
    {"top_k": 1},
    {"min_p": 0.0},
    {"min_p": 1.0},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0},
    {"repetition_penalty": 1e-3},
    {"max_tokens": None, "min_tokens": 50},
    {"max_tokens": 1},
    {"min_tokens": 5, "max_tokens": 5},
    {"logprobs": 0},
    {"logprobs": 20},
    {"prompt_logprobs": 0},
    {"prompt_logprobs": 20},
    {"n": 4},
    {"seed": 0},
    {"stop_token_ids": [0]},
])
def test_boundary_values_are_accepted(kwargs):
    p = SamplingParams(**kwargs)
    for name, value in kwargs.items():
        assert getattr(p, name) == value


def test_defaults():
    p = SamplingParams()
    assert p.n == 1
    assert p.temperature == 1.0
    assert p.top_p == 1.0
    assert p.top_k == 0
    assert p.min_p == 0.0
    assert p.seed is None
    assert p.presence_penalty == 0.0 and p.frequency_penalty == 0.0
    assert p.repetition_penalty == 1.0
    assert p.max_tokens == 16
    assert p.min_tokens == 0
    assert p.stop == [] and p.stop_token_ids == []
    assert p.include_stop_str_in_output is False
    assert p.ignore_eos is False
    assert p.logprobs is None and p.prompt_logprobs is None
    assert p.skip_special_tokens is True
    assert p.greedy is False


def test_stop_string_becomes_a_list():
    p = SamplingParams(stop="###")
    assert p.stop == ["###"]


def test_stop_list_is_copied():
    stops = ["a", "b"]
    ids = [1, 2]
    p = SamplingParams(stop=stops, stop_token_ids=ids)
    stops.append("c")
    ids.append(3)
    assert p.stop == ["a", "b"]
    assert p.stop_token_ids == [1, 2]


def test_stop_tuple_becomes_a_list():
    p = SamplingParams(stop=("x", "y"), stop_token_ids=(4,))
    assert p.stop == ["x", "y"]
    assert p.stop_token_ids == [4]


def test_top_k_minus_one_normalizes_to_zero():
    assert SamplingParams(top_k=-1).top_k == 0


@pytest.mark.parametrize("kwargs, greedy", [
    ({"temperature": 0.0}, True),
    ({"temperature": 1e-6}, True),
    ({"top_k": 1}, True),
    ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "top_k": 2}, False),
])
def test_greedy_property(kwargs, greedy):
    assert SamplingParams(**kwargs).greedy is greedy


def test_clone_applies_changes_and_revalidates():
    p = SamplingParams(temperature=0.5, stop="x", n=3)
    q = p.clone(n=1, seed=7)
    assert (q.n, q.seed, q.temperature, q.stop) == (1, 7, 0.5, ["x"])
    assert p.n == 3 and p.seed is None
    with pytest.raises(ValueError, match="temperature"):
        p.clone(temperature=-1.0)


def test_an_integer_float_field_becomes_a_float():
    """msgpack frames carry float fields as floats (an int of 2^64 could not be encoded)."""
    p = SamplingParams(repetition_penalty=2**64, temperature=1)
    assert isinstance(p.repetition_penalty, float) and isinstance(p.temperature, float)
