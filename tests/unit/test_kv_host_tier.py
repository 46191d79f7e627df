"""The KV host tier's bookkeeping, with no tensors: HostTier (ids, hashes, LRU, pins) and
the KVCacheManager that copies evicted device blocks out to it and finds them again."""
from __future__ import annotations

import pytest

from tessera.engine.kv_cache.host_tier import HostTier
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.request import Request
from tessera.sampling_params import SamplingParams


def test_host_tier_saves_once_and_reuses_the_oldest_unpinned():
    tier = HostTier(2)
    a, b = tier.save(b"a"), tier.save(b"b")
    assert {a, b} == {0, 1} and tier.lookup(b"a") == a
    assert tier.save(b"a") is None  # held already: no second copy
    tier.pin(b)  # a is now the oldest... b is pinned for this step
    c = tier.save(b"c")
    assert c == a and tier.lookup(b"a") is None and tier.lookup(b"c") == c
    tier.pin(c)
    assert tier.save(b"d") is None  # every block pinned: nothing saved
    tier.end_step()
    assert tier.num_pinned_blocks == 0 and tier.save(b"d") is not None
    assert tier.num_used_blocks == 2
    with pytest.raises(ValueError, match=">= 1 block"):
        HostTier(0)


def _req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams())


def _admit(kv: KVCacheManager, req: Request) -> int:
    """Admits req as the scheduler does; returns the tokens found (both tiers)."""
    hits = kv.find_prefix(req)
    num_hit = hits.num_blocks * kv.block_size
    assert kv.allocate_slots(req, req.num_tokens - num_hit, hits) is not None
    req.num_computed_tokens = req.num_tokens
    kv.cache_blocks(req)
    return num_hit


def test_evicted_prefix_goes_to_the_host_and_comes_back():
    kv = KVCacheManager(num_blocks=4, block_size=4, num_host_blocks=8)
    first = _req("a", list(range(13)))  # 3 full blocks + 1
    assert _admit(kv, first) == 0
    a_blocks = kv.block_ids("a")[:3]
    kv.free(first)
    assert kv.take_copies() == ([], [])
    other = _req("b", list(range(100, 116)))  # 4 blocks: evicts all of a's
    assert _admit(kv, other) == 0
    saved, back = kv.take_copies()
    assert len(saved) == 3 and back == []  # a's three full blocks copied out
    assert kv.host.num_used_blocks == 3
    kv.free(other)
    again = _req("a2", list(range(13)))
    assert _admit(kv, again) == 12  # found in the host tier
    out, back = kv.take_copies()
    held = [h for h, _ in back]
    assert held == [dict(saved)[d] for d in a_blocks]  # a's blocks, in prefix order
    assert [d for _, d in back] == kv.block_ids("a2")[:3]  # into the first new blocks
    assert kv.host_hit_tokens == 12 and kv.blocks_to_device == 3
    # b's blocks, evicted in the same step, went out too, never into a block copied back
    assert len(out) == 4 and not set(held) & {h for _, h in out}
    assert kv.host.num_used_blocks == 7


def test_device_hits_come_first_then_host_hits():
    kv = KVCacheManager(num_blocks=6, block_size=4, num_host_blocks=8)
    a = _req("a", list(range(17)))  # 4 full blocks + 1
    _admit(kv, a)
    kv.free(a)  # freed tail first: the tail is evicted first
    # 4 blocks: the unused one, a's partial tail, then a's blocks 3 and 2 (evicted)
    _admit(kv, _req("x", list(range(200, 216))))
    out, _ = kv.take_copies()
    assert len(out) == 2
    hits = kv.find_prefix(_req("a2", list(range(17))))
    assert (len(hits.device), len(hits.host)) == (2, 2)


def test_no_copies_without_a_host_tier_and_prefix_caching_is_required():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    a = _req("a", list(range(8)))
    _admit(kv, a)
    kv.free(a)
    _admit(kv, _req("b", list(range(50, 58))))
    assert kv.take_copies() == ([], [])
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        KVCacheManager(4, 4, enable_prefix_caching=False, num_host_blocks=4)
