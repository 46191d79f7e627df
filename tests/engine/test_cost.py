"""Per-request cost (`price_per_hour`, engine/cost.py): wall time is split between the
requests, by the tokens each computed in a step, and idle time, with nothing lost; a
request that computes more tokens costs more; n > 1 sums its children."""
from __future__ import annotations

import pytest

from tessera import LLM, SamplingParams
from tessera.engine.cost import CostMeter


class _Req:
    cost = 0.0


def test_the_meter_splits_steps_by_tokens_and_keeps_idle_apart():
    meter = CostMeter(price_per_hour=3600.0, devices=2)  # $2 per second
    meter._since = 0.0
    a, b = _Req(), _Req()
    meter.idle_until(1.0)  # 1 s idle before the first step
    meter.step_done({"a": 3, "b": 1}, {"a": a, "b": b}, now=1.5)
    meter.step_done({"a": 1}, {"a": a}, now=2.0)
    meter.went_idle()
    meter.idle_until(5.0)  # idle from 2.0 to 5.0
    assert (a.cost, b.cost) == pytest.approx((0.75 + 1.0, 0.25))
    assert meter.requests_usd == pytest.approx(2.0)
    assert meter.idle_usd == pytest.approx(2.0 + 6.0)
    assert meter.requests_usd + meter.idle_usd == pytest.approx(2.0 * 5.0)  # all wall time


def test_requests_carry_their_share(tiny_llama):
    llm = LLM(tiny_llama[0], skip_tokenizer_init=True, num_blocks=64, price_per_hour=3.6)
    prompts = [{"prompt_token_ids": list(range(5, 45))}, {"prompt_token_ids": [5, 6]}]
    outs = llm.generate(prompts, [SamplingParams(max_tokens=30, ignore_eos=True),
                                  SamplingParams(max_tokens=2, ignore_eos=True)])
    big, small = outs[0].cost, outs[1].cost
    assert big > small > 0
    meter = llm.engine.core.cost
    assert meter.requests_usd == pytest.approx(big + small)
    stats = llm.engine.core.stats()
    assert stats["cost_requests_usd"] == meter.requests_usd
    two = llm.generate([{"prompt_token_ids": [9, 8, 7]}],
                       SamplingParams(n=2, max_tokens=4, ignore_eos=True, seed=1))[0]
    assert two.cost == pytest.approx(meter.requests_usd - big - small)  # both children


def test_no_price_no_cost(tiny_llama):
    llm = LLM(tiny_llama[0], skip_tokenizer_init=True, num_blocks=16)
    out = llm.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(max_tokens=2))[0]
    assert out.cost == 0.0 and llm.engine.core.cost is None
    with pytest.raises(ValueError, match="price_per_hour must be >= 0"):
        LLM(tiny_llama[0], skip_tokenizer_init=True, price_per_hour=-1)
