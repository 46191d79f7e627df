"""Unit tests for `tessera.layers.sampler.sample` on hand-built SamplingBatches (CPU).

Distribution tests draw many independent samples at once by repeating one row N times
(every row gets its own exponential noise), with fixed generator seeds so each test is
deterministic.
"""
from __future__ import annotations

import math

import pytest
import torch

from tessera.layers.sampler import SamplingBatch, apply_penalties, fill_rows, sample


def sample_ids(logits, batch):
    """sample() with its token tensor as a list."""
    tokens, entries = sample(logits, batch)
    assert tokens.dtype == torch.int64 and tokens.shape == (logits.shape[0],)
    return tokens.tolist(), entries


def make_batch(rows: list[dict], shared_seed: int = 0) -> SamplingBatch:
    """One SamplingBatch row per dict. Keys follow SamplingParams (temperature, top_k,
    top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty, logprobs) plus
    prompt / output (token id lists), banned (ids), seed (a row's own generator) or
    generator (a given torch.Generator). Rows without either share one generator."""
    shared = torch.Generator().manual_seed(shared_seed)

    def col(name, default, dtype=torch.float32):
        return torch.tensor([r.get(name, default) for r in rows], dtype=dtype)

    gens = []
    for r in rows:
        if "generator" in r:
            gens.append(r["generator"])
        elif r.get("seed") is not None:
            gens.append(torch.Generator().manual_seed(r["seed"]))
        else:
            gens.append(shared)
    temps = [r.get("temperature", 1.0) for r in rows]
    top_ks = [0 if r.get("top_k", 0) == -1 else r.get("top_k", 0) for r in rows]
    return SamplingBatch(
        temperature=col("temperature", 1.0),
        top_k=torch.tensor(top_ks, dtype=torch.int64),
        top_p=col("top_p", 1.0),
        min_p=col("min_p", 0.0),
        presence_penalty=col("presence_penalty", 0.0),
        frequency_penalty=col("frequency_penalty", 0.0),
        repetition_penalty=col("repetition_penalty", 1.0),
        prompt_token_ids=[list(r.get("prompt", [])) for r in rows],
        output_token_ids=[list(r.get("output", [])) for r in rows],
        generators=gens,
        shared_generator=shared,  # as the runner gives its own
        banned_token_ids=[list(r.get("banned", [])) for r in rows],
        num_logprobs=[r.get("logprobs") for r in rows],
        all_greedy=all(t < 1e-5 or k == 1 for t, k in zip(temps, top_ks)),
        any_penalty=any(r.get("presence_penalty", 0.0) or r.get("frequency_penalty", 0.0)
                        or r.get("repetition_penalty", 1.0) != 1.0 for r in rows),
    )


def draw_many(logits_row: torch.Tensor, params: dict, n: int = 4000, seed: int = 0) -> torch.Tensor:
    """n independent draws of one row's distribution -> tensor of token ids."""
    logits = logits_row.float().expand(n, -1).clone()
    tokens, _ = sample_ids(logits, make_batch([params] * n, shared_seed=seed))
    return torch.tensor(tokens)


def logits_from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float32).log()


# -- greedy --------------------------------------------------------------------------------

def test_greedy_picks_argmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    tokens, entries = sample_ids(logits, make_batch([{"temperature": 0.0}] * 6))
    assert tokens == logits.argmax(dim=-1).tolist()
    assert entries == [None] * 6


def test_greedy_rows_take_argmax_in_a_mixed_batch():
    torch.manual_seed(1)
    logits = torch.randn(4, 30)
    rows = [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.0}, {"temperature": 2.0}]
    for seed in range(20):
        tokens, _ = sample_ids(logits, make_batch(rows, shared_seed=seed))
        assert tokens[0] == int(logits[0].argmax())
        assert tokens[2] == int(logits[2].argmax())


def test_sample_does_not_modify_the_callers_logits():
    torch.manual_seed(2)
    logits = torch.randn(2, 20)
    before = logits.clone()
    sample(logits, make_batch([{"repetition_penalty": 2.0, "prompt": [1, 2], "banned": [3],
                                "top_k": 5, "top_p": 0.5, "temperature": 0.5}] * 2))
    assert torch.equal(logits, before)


def test_top_k_one_equals_greedy():
    torch.manual_seed(3)
    logits = torch.randn(8, 40)
    # all rows top_k=1 (the all-greedy path)
    tokens, _ = sample_ids(logits, make_batch([{"top_k": 1, "temperature": 1.3}] * 8))
    assert tokens == logits.argmax(dim=-1).tolist()
    # top_k=1 rows next to a random row (the sampling path)
    rows = [{"top_k": 1, "temperature": 1.3}] * 7 + [{"temperature": 1.0}]
    for seed in range(10):
        tokens, _ = sample_ids(logits, make_batch(rows, shared_seed=seed))
        assert tokens[:7] == logits[:7].argmax(dim=-1).tolist()


# -- top-k / top-p / min-p -------------------------------------------------------------------

def test_top_k_restricts_draws_to_the_k_best():
    torch.manual_seed(4)
    row = torch.randn(30) * 0.3  # fairly flat: without top-k many ids would appear
    best3 = set(row.topk(3).indices.tolist())
    drawn = set(draw_many(row, {"top_k": 3}).tolist())
    assert drawn == best3
    assert len(set(draw_many(row, {}).tolist())) > 10  # control: plain sampling spreads


def test_top_p_keeps_smallest_set_reaching_p():
    row = logits_from_probs([0.5, 0.3, 0.15, 0.05])
    draws = draw_many(row, {"top_p": 0.7}, n=8000)
    assert set(draws.tolist()) == {0, 1}
    # Renormalized over the kept set: 0.5/0.8 and 0.3/0.8.
    assert (draws == 0).float().mean().item() == pytest.approx(0.625, abs=0.03)


def test_top_p_does_not_shuffle_ids():
    # Same distribution but the ids are permuted: the kept set follows the probabilities.
    row = logits_from_probs([0.05, 0.3, 0.15, 0.5])
    assert set(draw_many(row, {"top_p": 0.7}).tolist()) == {1, 3}


@pytest.mark.parametrize("top_p, kept", [(0.25, 1), (0.5, 2), (0.75, 3)])
def test_top_p_set_that_reaches_p_exactly_is_not_extended(top_p, kept):
    # Four equal logits: softmax is exactly 0.25 each in any float implementation, so
    # the smallest set whose mass reaches top_p has exactly top_p / 0.25 tokens. A token
    # whose better tokens already hold mass == top_p must be dropped (vLLM and HF
    # transformers keep exactly `kept` tokens here).
    row = torch.zeros(4)
    assert len(set(draw_many(row, {"top_p": top_p}, n=4000).tolist())) == kept


def test_top_p_always_keeps_the_best_token():
    row = logits_from_probs([0.1, 0.6, 0.3])
    assert set(draw_many(row, {"top_p": 1e-6}).tolist()) == {1}


def test_top_k_and_top_p_together():
    row = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    # top-k 3 leaves [0.4,0.3,0.2] -> renormalized [0.444,0.333,0.222]; top_p 0.7 keeps {0,1}
    assert set(draw_many(row, {"top_k": 3, "top_p": 0.7}).tolist()) == {0, 1}


def test_min_p_drops_tokens_below_fraction_of_max_prob():
    row = logits_from_probs([0.5, 0.3, 0.15, 0.05])
    # floor = 0.2 * 0.5 = 0.1: only id 3 (0.05) falls below it.
    assert set(draw_many(row, {"min_p": 0.2}, n=8000).tolist()) == {0, 1, 2}
    # floor = 0.5 * 0.5 = 0.25: ids 2 and 3 fall below.
    assert set(draw_many(row, {"min_p": 0.5}, n=8000).tolist()) == {0, 1}


def test_rows_keep_their_own_top_k_top_p():
    row = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    n = 3000
    logits = row.expand(2 * n, -1).clone()
    rows = [{"top_k": 1, "temperature": 1.0}] * n + [{"top_p": 1.0}] * n
    rows[0] = {"top_k": 2}  # make sure the batch takes the sampling path with mixed k
    tokens = torch.tensor(sample_ids(logits, make_batch(rows))[0])
    assert set(tokens[1:n].tolist()) == {0}
    assert set(tokens[n:].tolist()) == {0, 1, 2, 3}  # the other rows are not truncated


# -- temperature and the plain distribution ----------------------------------------------------

def test_near_zero_temperature_behaves_greedy():
    torch.manual_seed(5)
    row = torch.randn(20)
    # 1e-3 is above the greedy threshold, so this goes through the random path.
    assert set(draw_many(row, {"temperature": 1e-3}).tolist()) == {int(row.argmax())}


def test_high_temperature_spreads_towards_uniform():
    row = logits_from_probs([0.9, 0.05, 0.03, 0.02])
    cool = draw_many(row, {"temperature": 1.0}, n=8000)
    hot = draw_many(row, {"temperature": 100.0}, n=8000)
    assert (cool == 0).float().mean().item() == pytest.approx(0.9, abs=0.02)
    freqs = torch.bincount(hot, minlength=4).float() / len(hot)
    assert torch.allclose(freqs, torch.full((4,), 0.25), atol=0.03)


def test_empirical_frequencies_match_softmax():
    torch.manual_seed(6)
    row = torch.randn(8)
    n = 20000
    draws = draw_many(row, {}, n=n, seed=11)
    freqs = torch.bincount(draws, minlength=8).float() / n
    probs = torch.softmax(row, dim=-1)
    # worst-case binomial std is 0.0035 at n=20000; 0.015 is > 4 sigma
    assert torch.allclose(freqs, probs, atol=0.015), (freqs, probs)


def test_temperature_scales_logits():
    row = logits_from_probs([0.6, 0.3, 0.1])
    n = 20000
    draws = draw_many(row, {"temperature": 0.5}, n=n, seed=3)
    freqs = torch.bincount(draws, minlength=3).float() / n
    expected = torch.softmax(row / 0.5, dim=-1)
    assert torch.allclose(freqs, expected, atol=0.015), (freqs, expected)


# -- seeds ------------------------------------------------------------------------------------

def _seeded_run(position: int, others: list[dict], steps: int = 15, seed: int = 1234) -> list[int]:
    """Samples `steps` times with a seeded row at `position` among `others`."""
    torch.manual_seed(7)
    vocab = 64
    row_logits = torch.randn(vocab) * 0.5
    gen = torch.Generator().manual_seed(seed)
    got = []
    for step in range(steps):
        rows = list(others)
        rows.insert(position, {"generator": gen, "temperature": 0.9})
        logits = torch.randn(len(rows), vocab)
        logits[position] = row_logits
        tokens, _ = sample_ids(logits, make_batch(rows, shared_seed=100 + step))
        got.append(tokens[position])
    return got


def test_same_seed_same_tokens_whatever_else_is_in_the_batch():
    alone = _seeded_run(0, [])
    assert len(set(alone)) > 3  # it really samples
    assert _seeded_run(0, []) == alone
    others = [{"temperature": 1.0}, {"top_k": 5}, {"top_p": 0.6, "temperature": 0.3},
              {"temperature": 0.0}, {"min_p": 0.2}]
    assert _seeded_run(0, others) == alone
    assert _seeded_run(3, others) == alone
    assert _seeded_run(1, others[:2] + [{"seed": 99}]) == alone


def test_rows_sharing_the_runners_generator_draw_at_once():
    """fill_rows: one fill for every row from the shared (runner's) generator, then one per
    run of a seeded generator's rows (a verify step's draft rows), whose numbers are those
    it draws alone; the shared generator untouched when no row takes it."""
    shared, a, b = (torch.Generator().manual_seed(s) for s in (0, 1, 2))
    gens = [shared, a, shared, b, b, shared]

    def run(gens, shared_generator):
        calls, out = [], torch.empty(len(gens), 3)
        fill_rows(out, gens, lambda t, g: calls.append((g, t.shape[0] if t.dim() > 1 else 0))
                  or t.uniform_(generator=g), shared_generator)
        return calls, out

    calls, out = run(gens, shared)
    assert calls == [(shared, 6), (a, 1), (b, 2)]
    assert torch.equal(out[1], torch.empty(3).uniform_(generator=torch.Generator().manual_seed(1)))
    alone = torch.empty(2, 3).uniform_(generator=torch.Generator().manual_seed(2))
    assert torch.equal(out[3:5], alone)  # b's two rows as b draws them alone
    calls, _ = run(gens, None)
    assert [g for g, _ in calls] == [shared, a, shared, b, shared]
    before = shared.get_state()
    calls, _ = run([a, a, b], shared)  # every row seeded: the runner's generator unused
    assert [g for g, _ in calls] == [a, b] and torch.equal(shared.get_state(), before)


def test_different_seeds_give_different_tokens():
    assert _seeded_run(0, [], seed=1) != _seeded_run(0, [], seed=2)


# -- penalties ----------------------------------------------------------------------------------

def _hand_penalize(logits: list[float], prompt, output, rep, presence, frequency) -> list[float]:
    out = []
    for t, l in enumerate(logits):
        count = output.count(t)
        if t in prompt or count:
            l = l / rep if l > 0 else l * rep
        l -= frequency * count
        l -= presence * (1.0 if count else 0.0)
        out.append(l)
    return out


def test_penalties_match_hand_computation():
    raw = [2.0, -1.0, 0.5, -0.25, 3.0, 0.0, -2.0, 1.5]
    rows = [
        dict(prompt=[1, 2, 7], output=[2, 3, 3, 5, 4, 3], repetition_penalty=1.5,
             presence_penalty=0.4, frequency_penalty=0.3),
        dict(prompt=[0], output=[6, 6], repetition_penalty=0.8,
             presence_penalty=-0.5, frequency_penalty=-0.2),
        dict(prompt=[0, 1, 2], output=[3]),  # no penalties: unchanged
    ]
    logits = torch.tensor([raw] * 3)
    apply_penalties(logits, make_batch(rows))
    for i, r in enumerate(rows):
        want = _hand_penalize(raw, r["prompt"], r["output"], r.get("repetition_penalty", 1.0),
                              r.get("presence_penalty", 0.0), r.get("frequency_penalty", 0.0))
        assert logits[i].tolist() == pytest.approx(want, abs=1e-6), i


def test_repetition_penalty_applies_to_prompt_tokens():
    raw = [1.0, 2.0, -1.0, 0.5]
    logits = torch.tensor([raw])
    apply_penalties(logits, make_batch([dict(prompt=[1, 2], output=[], repetition_penalty=2.0)]))
    assert logits[0].tolist() == pytest.approx([1.0, 1.0, -2.0, 0.5])


def test_presence_and_frequency_penalties_ignore_prompt_tokens():
    raw = [1.0, 2.0, -1.0, 0.5]
    logits = torch.tensor([raw])
    apply_penalties(logits, make_batch([dict(prompt=[0, 1, 2], output=[3, 3],
                                             presence_penalty=1.0, frequency_penalty=0.5)]))
    # only token 3 (in the output, twice) moves: 0.5 - 2*0.5 - 1.0
    assert logits[0].tolist() == pytest.approx([1.0, 2.0, -1.0, -1.5])


def test_repetition_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    base = dict(temperature=0.0, prompt=[0], output=[])
    assert sample_ids(logits, make_batch([base]))[0] == [0]
    assert sample_ids(logits, make_batch([dict(base, repetition_penalty=1.5)]))[0] == [1]  # 3/1.5=2
    assert sample_ids(logits, make_batch([dict(base, repetition_penalty=1.1)]))[0] == [0]


def test_frequency_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    base = dict(temperature=0.0, prompt=[], output=[0, 0])
    assert sample_ids(logits, make_batch([dict(base, frequency_penalty=0.2)]))[0] == [0]  # 2.6
    assert sample_ids(logits, make_batch([dict(base, frequency_penalty=0.3)]))[0] == [1]  # 2.4


# -- bans -------------------------------------------------------------------------------------

def test_banned_tokens_are_never_drawn():
    torch.manual_seed(8)
    row = torch.randn(10)
    banned = row.topk(2).indices.tolist()  # ban the two most likely tokens
    draws = draw_many(row, {"banned": banned}, n=5000)
    assert not set(banned) & set(draws.tolist())
    assert len(set(draws.tolist())) > 3
    # greedy takes the best token that is not banned
    tokens, _ = sample_ids(row[None, :].clone(), make_batch([{"temperature": 0.0, "banned": banned}]))
    assert tokens == [int(row.topk(3).indices[2])]


def test_bans_are_per_row():
    logits = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    tokens, _ = sample_ids(logits, make_batch([{"temperature": 0.0, "banned": [0]},
                                           {"temperature": 0.0}]))
    assert tokens[0] != 0 and tokens[1] == 0


# -- logprobs ---------------------------------------------------------------------------------

def test_logprobs_entries_use_raw_logits_and_rank_chosen_token():
    raw = torch.tensor([[3.0, 2.5, 0.0, -1.0, 1.0],
                        [0.1, 0.2, 0.3, 0.4, 0.5],
                        [1.0, 0.0, 0.0, 0.0, 0.0]])
    rows = [
        # penalty demotes token 0 (3 -> 1.5), so greedy picks 1, whose raw rank is 2
        dict(temperature=0.0, prompt=[0], repetition_penalty=2.0, logprobs=3),
        # banned best token: greedy picks 3 (raw rank 2); only the chosen token wanted
        dict(temperature=0.0, banned=[4], logprobs=0),
        dict(temperature=0.0, logprobs=None),
    ]
    tokens, entries = sample_ids(raw.clone(), make_batch(rows))
    assert tokens == [1, 3, 0]
    ref = torch.log_softmax(raw, dim=-1)

    ids, vals, ranks = entries[0]
    assert ids == [1, 0, 1, 4]  # chosen first, then the top 3 in order
    assert ranks == [2, 1, 2, 3]
    assert vals == pytest.approx([ref[0, 1].item(), ref[0, 0].item(), ref[0, 1].item(),
                                  ref[0, 4].item()], abs=1e-6)

    ids, vals, ranks = entries[1]
    assert ids == [3] and ranks == [2]
    assert vals == pytest.approx([ref[1, 3].item()], abs=1e-6)

    assert entries[2] is None


def test_logprobs_ignore_temperature_and_top_k():
    torch.manual_seed(9)
    raw = torch.randn(3, 12)
    rows = [dict(temperature=0.3, top_k=2, logprobs=5, seed=s) for s in range(3)]
    tokens, entries = sample_ids(raw.clone(), make_batch(rows))
    ref = torch.log_softmax(raw, dim=-1)
    for i, (ids, vals, ranks) in enumerate(entries):
        assert ids[0] == tokens[i]
        assert vals[0] == pytest.approx(ref[i, tokens[i]].item(), abs=1e-6)
        assert ranks[0] == int((ref[i] > ref[i, tokens[i]]).sum()) + 1
        top = ref[i].topk(5)
        assert ids[1:] == top.indices.tolist()
        assert vals[1:] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert ranks[1:] == [1, 2, 3, 4, 5]
        # raw logprobs form a distribution (temperature 0.3 would not give these values)
        assert math.isclose(sum(math.exp(v) for v in ref[i].tolist()), 1.0, rel_tol=1e-5)
