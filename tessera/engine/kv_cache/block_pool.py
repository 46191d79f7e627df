"""BlockPool: the fixed set of KV-cache blocks, reference counts, and the prefix cache.

A block holds `block_size` tokens' K and V for every layer (the tensors live in the
worker; the pool only hands out ids). Free blocks wait in LRU order: `allocate(n)` takes
the least recently freed. A full block may carry a hash of its tokens and all tokens
before it (`prefix_hash`); such a block stays findable through `cached` after it is
freed, until allocation evicts it, so a later request with the same prefix can `touch`
it back instead of recomputing. Reference counts > 1 mean requests share a block.
`num_cached_free_blocks`: free blocks still findable (the memory accounting's "cached").
`on_evict(block, hash)`, if set, hears of each findable block allocation evicts (the KV
host tier copies it out first: kv_cache/host_tier.py).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Optional, Sequence

BlockHash = bytes


def prefix_hash(parent: Optional[BlockHash], token_ids: Sequence[int]) -> BlockHash:
    """Hash of one full block chained to its parent's (a 128-bit digest: no silent clashes)."""
    h = hashlib.blake2b(parent or b"", digest_size=16)
    h.update(b",".join(str(t).encode() for t in token_ids))
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}.")
        self.num_blocks = num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._ref_counts = [0] * num_blocks
        self._hash_of: list[Optional[BlockHash]] = [None] * num_blocks
        self.cached: dict[BlockHash, int] = {}
        self.num_cached_free_blocks = 0  # free blocks that still hold a findable prefix
        self.on_evict: Optional[Callable[[int, BlockHash], None]] = None  # (block, its hash)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks, only {len(self._free)} free")
        ids = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            if self._hash_of[block] is not None:
                self.num_cached_free_blocks -= 1
            self._evict(block)
            self._ref_counts[block] = 1
            ids.append(block)
        return ids

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference on blocks found in the prefix cache (free or in use)."""
        for i in block_ids:
            if self._ref_counts[i] == 0:
                del self._free[i]
                if self._hash_of[i] is not None:
                    self.num_cached_free_blocks -= 1
            self._ref_counts[i] += 1

    def share(self, block_ids: list[int]) -> None:
        for i in block_ids:
            if self._ref_counts[i] < 1:
                raise RuntimeError(f"block {i} is free and cannot be shared")
            self._ref_counts[i] += 1

    def free(self, block_ids: list[int]) -> None:
        for i in block_ids:
            if self._ref_counts[i] < 1:
                raise RuntimeError(f"block {i} freed twice")
            self._ref_counts[i] -= 1
            if self._ref_counts[i] == 0:
                self._free[i] = None
                if self._hash_of[i] is not None:
                    self.num_cached_free_blocks += 1

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def is_free(self, block_id: int) -> bool:
        return self._ref_counts[block_id] == 0

    def register(self, block_id: int, block_hash: BlockHash) -> None:
        """Make a full, computed block findable by its prefix hash."""
        if block_hash not in self.cached and self._hash_of[block_id] is None:
            self.cached[block_hash] = block_id
            self._hash_of[block_id] = block_hash
            if self._ref_counts[block_id] == 0:
                self.num_cached_free_blocks += 1

    def _evict(self, block_id: int) -> None:
        h = self._hash_of[block_id]
        if h is not None:
            self._hash_of[block_id] = None
            if self.cached.get(h) == block_id:
                del self.cached[h]
                if self.on_evict is not None:  # the KV host tier may keep a copy
                    self.on_evict(block_id, h)
