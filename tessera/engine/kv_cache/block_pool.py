"""BlockPool: the fixed set of KV-cache blocks, a free list and reference counts.

A block holds `block_size` tokens' K and V for every layer (the tensors live in the
worker; this pool only hands out ids). `allocate(n)` takes blocks off the free list
with ref count 1; `free(ids)` drops a reference and returns a block when it reaches 0.
Reference counts > 1 let requests share blocks (n > 1, prefix reuse).
"""
from __future__ import annotations

from collections import deque


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}.")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks, only {len(self._free)} free")
        ids = [self._free.popleft() for _ in range(n)]
        for i in ids:
            self._ref_counts[i] = 1
        return ids

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
                self._free.append(i)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]
