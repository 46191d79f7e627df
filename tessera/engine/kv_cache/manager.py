"""KVCacheManager: which blocks each request owns.

`allocate_slots(req, n)` makes room for `n` more tokens of `req` (its computed tokens plus
n must fit in its blocks) and returns the new block ids, or None when the pool is short
(the scheduler then preempts). `free(req)` gives every block back. The block table of a
request is the list of its block ids; token i lives in block i // block_size.
"""
from __future__ import annotations

from typing import Optional

from tessera.engine.kv_cache.block_pool import BlockPool
from tessera.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self._blocks: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def block_ids(self, request_id: str) -> list[int]:
        return self._blocks.get(request_id, [])

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def allocate_slots(self, req: Request, num_new_tokens: int) -> Optional[list[int]]:
        owned = self._blocks.setdefault(req.request_id, [])
        need = self.blocks_needed(req.num_computed_tokens + num_new_tokens) - len(owned)
        if need <= 0:
            return []
        if need > self.pool.num_free_blocks:
            return None
        new = self.pool.allocate(need)
        owned.extend(new)
        return new

    def free(self, req: Request) -> None:
        owned = self._blocks.pop(req.request_id, [])
        self.pool.free(list(reversed(owned)))
