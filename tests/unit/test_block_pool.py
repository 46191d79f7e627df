"""Unit tests for the paged KV cache bookkeeping: BlockPool and KVCacheManager.

No tensors are involved: the pool hands out block ids with reference counts, and the
manager maps each request to the blocks holding its tokens.
"""
import math

import pytest

from tessera.engine.kv_cache.block_pool import BlockPool
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.request import Request
from tessera.sampling_params import SamplingParams


def make_request(rid: str, num_prompt_tokens: int) -> Request:
    return Request(rid, list(range(num_prompt_tokens)), SamplingParams())


# -- BlockPool -------------------------------------------------------------------------

def test_new_pool_has_every_block_free():
    pool = BlockPool(8)
    assert pool.num_blocks == 8
    assert pool.num_free_blocks == 8
    assert pool.usage == 0.0
    assert all(pool.ref_count(i) == 0 for i in range(8))


@pytest.mark.parametrize("num_blocks", [0, -1])
def test_pool_needs_at_least_one_block(num_blocks):
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(num_blocks)


def test_allocate_returns_distinct_ids_with_ref_count_one():
    pool = BlockPool(8)
    a = pool.allocate(3)
    b = pool.allocate(2)
    assert len(a) == 3 and len(b) == 2
    assert len(set(a) | set(b)) == 5
    assert all(0 <= i < 8 for i in a + b)
    assert all(pool.ref_count(i) == 1 for i in a + b)
    assert pool.num_free_blocks == 3
    assert pool.usage == pytest.approx(5 / 8)


def test_allocate_zero_is_a_no_op():
    pool = BlockPool(4)
    assert pool.allocate(0) == []
    assert pool.num_free_blocks == 4


def test_allocate_whole_pool_then_one_more_fails_without_side_effects():
    pool = BlockPool(4)
    ids = pool.allocate(4)
    assert sorted(ids) == [0, 1, 2, 3]
    assert pool.num_free_blocks == 0
    assert pool.usage == 1.0
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    assert pool.num_free_blocks == 0
    assert all(pool.ref_count(i) == 1 for i in ids)


def test_over_allocation_takes_nothing():
    pool = BlockPool(4)
    pool.allocate(1)
    with pytest.raises(RuntimeError):
        pool.allocate(4)
    assert pool.num_free_blocks == 3  # the failed call did not take the 3 free ones


def test_free_returns_blocks_and_they_can_be_reused():
    pool = BlockPool(4)
    ids = pool.allocate(4)
    pool.free(ids[:2])
    assert pool.num_free_blocks == 2
    assert pool.ref_count(ids[0]) == 0 and pool.ref_count(ids[1]) == 0
    again = pool.allocate(2)
    assert sorted(again) == sorted(ids[:2])
    assert pool.num_free_blocks == 0


def test_double_free_raises():
    pool = BlockPool(4)
    ids = pool.allocate(2)
    pool.free(ids)
    with pytest.raises(RuntimeError, match="twice"):
        pool.free([ids[0]])
    assert pool.num_free_blocks == 4  # the free list did not get a duplicate


def test_freeing_a_never_allocated_block_raises():
    pool = BlockPool(4)
    with pytest.raises(RuntimeError):
        pool.free([2])
    assert pool.num_free_blocks == 4


def test_share_increments_ref_count_and_block_survives_first_free():
    pool = BlockPool(4)
    [b] = pool.allocate(1)
    pool.share([b])
    pool.share([b])
    assert pool.ref_count(b) == 3
    pool.free([b])
    assert pool.ref_count(b) == 2
    assert pool.num_free_blocks == 3  # still held by the other owners
    pool.free([b])
    pool.free([b])
    assert pool.ref_count(b) == 0
    assert pool.num_free_blocks == 4
    with pytest.raises(RuntimeError):
        pool.free([b])


def test_sharing_a_free_block_raises():
    pool = BlockPool(4)
    with pytest.raises(RuntimeError, match="free"):
        pool.share([0])
    assert pool.ref_count(0) == 0


def test_no_block_is_handed_out_twice_while_held():
    pool = BlockPool(16)
    held = set()
    for n in (3, 5, 1, 7):
        got = pool.allocate(n)
        assert held.isdisjoint(got)
        held.update(got)
    assert len(held) == 16 and pool.num_free_blocks == 0


# -- KVCacheManager -------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("num_tokens", [1, 3, 4, 5, 16, 17, 33])
def test_blocks_needed_is_ceil_division(block_size, num_tokens):
    kv = KVCacheManager(num_blocks=64, block_size=block_size)
    assert kv.blocks_needed(num_tokens) == math.ceil(num_tokens / block_size)
    assert kv.blocks_needed(0) == 0


def test_allocate_slots_grows_block_list_by_ceil_tokens_over_block_size():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    req = make_request("r", 10)
    new = kv.allocate_slots(req, 10)  # 10 tokens -> 3 blocks
    assert len(new) == 3
    assert kv.block_ids("r") == new
    assert kv.num_free_blocks == 13

    req.num_computed_tokens = 10
    assert kv.allocate_slots(req, 2) == []  # 12 tokens still fit in 3 blocks
    assert len(kv.block_ids("r")) == 3

    req.num_computed_tokens = 12
    new2 = kv.allocate_slots(req, 1)  # 13 tokens -> 4 blocks
    assert len(new2) == 1
    assert kv.block_ids("r") == new + new2
    assert kv.num_free_blocks == 12


def test_allocate_slots_token_by_token_matches_ceil_formula():
    block_size = 4
    kv = KVCacheManager(num_blocks=32, block_size=block_size)
    req = make_request("r", 1)
    for total in range(1, 40):
        kv.allocate_slots(req, 1)
        req.num_computed_tokens += 1
        assert len(kv.block_ids("r")) == math.ceil(total / block_size)
        assert kv.num_free_blocks == 32 - math.ceil(total / block_size)


def test_allocate_slots_chunked_prefill_counts_computed_tokens():
    kv = KVCacheManager(num_blocks=16, block_size=8)
    req = make_request("r", 30)
    assert len(kv.allocate_slots(req, 8)) == 1
    req.num_computed_tokens = 8
    assert len(kv.allocate_slots(req, 9)) == 2  # 17 tokens -> 3 blocks
    req.num_computed_tokens = 17
    assert len(kv.allocate_slots(req, 13)) == 1  # 30 tokens -> 4 blocks
    assert len(kv.block_ids("r")) == 4


def test_allocate_slots_returns_none_when_short_and_allocates_nothing():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a, b = make_request("a", 8), make_request("b", 12)
    assert len(kv.allocate_slots(a, 8)) == 2
    assert kv.allocate_slots(b, 12) is None  # needs 3, only 2 free
    assert kv.num_free_blocks == 2
    assert kv.block_ids("b") == []
    assert kv.block_ids("a") and len(kv.block_ids("a")) == 2

    # A partly-owning request that is short by one block also gets nothing new.
    a.num_computed_tokens = 8
    assert len(kv.allocate_slots(a, 8)) == 2  # a: 16 tokens -> 4 blocks, pool now empty
    a.num_computed_tokens = 16
    assert kv.allocate_slots(a, 1) is None
    assert len(kv.block_ids("a")) == 4
    assert kv.num_free_blocks == 0


def test_blocks_of_different_requests_are_disjoint():
    kv = KVCacheManager(num_blocks=12, block_size=2)
    reqs = [make_request(f"r{i}", 5) for i in range(4)]
    for r in reqs:
        kv.allocate_slots(r, 5)
    owned = [set(kv.block_ids(r.request_id)) for r in reqs]
    assert all(len(o) == 3 for o in owned)
    assert len(set().union(*owned)) == 12


def test_free_returns_all_blocks_of_the_request():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a, b = make_request("a", 13), make_request("b", 5)
    kv.allocate_slots(a, 13)
    kv.allocate_slots(b, 5)
    assert kv.num_free_blocks == 10 - 4 - 2
    a_blocks = kv.block_ids("a")
    kv.free(a)
    assert kv.num_free_blocks == 10 - 2
    assert kv.block_ids("a") == []
    assert all(kv.pool.ref_count(i) == 0 for i in a_blocks)
    assert len(kv.block_ids("b")) == 2
    kv.free(b)
    assert kv.num_free_blocks == 10
    assert kv.usage == 0.0


def test_free_of_unknown_or_already_freed_request_is_harmless():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    r = make_request("r", 4)
    kv.free(r)  # never allocated
    kv.allocate_slots(r, 4)
    kv.free(r)
    kv.free(r)  # second free: nothing left to free, must not double-free blocks
    assert kv.num_free_blocks == 4


def test_pool_counts_free_blocks_that_hold_a_prefix():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.register(a, b"hash-a")
    assert pool.num_cached_free_blocks == 0  # in use
    pool.free([a, b])
    assert pool.num_cached_free_blocks == 1  # free, still findable
    pool.touch([a])
    assert pool.num_cached_free_blocks == 0
    pool.free([a])
    assert pool.num_cached_free_blocks == 1
    pool.allocate(4)  # evicts every block, a included
    assert pool.num_cached_free_blocks == 0 and not pool.cached
