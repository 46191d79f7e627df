"""HostTier: the KV cache's second level, in CPU memory (`--kv-offload-gb`): ids and prefix
hashes of host blocks; the worker holds their bytes (worker/kv_host_tier.py).

A full device block that the device pool evicts (a cached prefix nobody uses, or a
preempted request's) is copied to a host block before its new owner writes it, instead of
being lost; a later request whose prefix continues past the device hits into host blocks
gets those copied back into fresh device blocks instead of recomputing them (the
KVCacheManager schedules both kinds of copy, and the worker runs them before the step's
forward: evictions first, then the copies back).
`save(hash)` -> the host block to copy an evicted device block into (None: already held,
or every host block is pinned); the least recently used unpinned host block is reused
when none is free. `lookup(hash)` -> host block or None. `pin(id)`: the source of a copy
back this step, never reused before the step is out (`end_step()` unpins). Host blocks
keep their contents after a copy back: a block evicted again needs no second copy.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from tessera.engine.kv_cache.block_pool import BlockHash


class HostTier:
    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"the KV host tier needs >= 1 block, got {num_blocks}.")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self._lru: OrderedDict[int, None] = OrderedDict()  # held blocks, oldest first
        self._hash_of: list[Optional[BlockHash]] = [None] * num_blocks
        self.cached: dict[BlockHash, int] = {}
        self._pinned: set[int] = set()

    @property
    def num_used_blocks(self) -> int:
        return len(self._lru)

    @property
    def num_pinned_blocks(self) -> int:
        return len(self._pinned)

    def lookup(self, block_hash: BlockHash) -> Optional[int]:
        return self.cached.get(block_hash)

    def save(self, block_hash: BlockHash) -> Optional[int]:
        held = self.cached.get(block_hash)
        if held is not None:
            self._lru.move_to_end(held)
            return None
        block = self._take()
        if block is None:
            return None
        self._hash_of[block] = block_hash
        self.cached[block_hash] = block
        self._lru[block] = None
        return block

    def _take(self) -> Optional[int]:
        if self._free:
            return self._free.pop()
        for block in self._lru:  # oldest first
            if block not in self._pinned:
                del self._lru[block]
                del self.cached[self._hash_of[block]]
                self._hash_of[block] = None
                return block
        return None

    def pin(self, block: int) -> None:
        self._pinned.add(block)
        self._lru.move_to_end(block)

    def end_step(self) -> None:
        self._pinned.clear()
