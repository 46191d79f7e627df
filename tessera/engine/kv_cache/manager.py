"""KVCacheManager: which blocks each request owns, and prefix reuse between requests.

`find_prefix(req)` returns the cached blocks that hold the longest run of the request's
leading full blocks (never all its tokens: the last one must be computed to sample):
PrefixHits, device blocks then, with a KV host tier (kv_cache/host_tier.py), host blocks
that continue the run. `allocate_slots(req, n, hits, num_lookahead)` takes references on
the device hits, gives the host hits new device blocks (their copies back are scheduled)
and makes room for `n` more tokens and `num_lookahead` beyond them (slots a speculative
proposer writes drafts' KV into): computed tokens plus n plus lookahead must fit in its
blocks; it returns the new block ids, or None when the pool is short (nothing is taken
then; the scheduler preempts). With a host tier, a findable block that allocation evicts
is copied out to it first; `take_copies()` hands the step's copies (out, then back) to
the scheduler's output.
`cache_blocks(req)` registers the request's newly full, computed blocks under their
prefix hashes. `free(req)` gives every block back (the tail first, so the tail is
evicted first). Token i of a request lives in block_ids[i // block_size].
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from tessera.engine.kv_cache.block_pool import BlockHash, BlockPool, prefix_hash
from tessera.engine.kv_cache.host_tier import HostTier
from tessera.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass
class PrefixHits:
    device: list[int]  # device blocks holding the request's leading full blocks
    host: list[int] = dataclasses.field(default_factory=list)  # host blocks of the next ones

    @property
    def num_blocks(self) -> int:
        return len(self.device) + len(self.host)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 num_host_blocks: int = 0):
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.enable_prefix_caching = enable_prefix_caching
        self.host: Optional[HostTier] = None  # the KV host tier (kv_cache/host_tier.py)
        if num_host_blocks:
            if not enable_prefix_caching:
                raise ValueError("the KV host tier (kv_offload_gb) finds blocks by their "
                                 "prefix hash: it needs enable_prefix_caching")
            self.host = HostTier(num_host_blocks)
            self.pool.on_evict = self._save_evicted
        self.swap_out: list[tuple[int, int]] = []  # this step's (device, host) copies
        self.swap_in: list[tuple[int, int]] = []  # this step's (host, device) copies back
        self.host_hit_tokens = 0  # prompt tokens found in the host tier
        self.blocks_to_host = self.blocks_to_device = 0
        self._blocks: dict[str, list[int]] = {}
        self._hashes: dict[str, list[BlockHash]] = {}  # hashes of each request's full blocks
        self._num_registered: dict[str, int] = {}  # leading blocks already registered
        self.hit_tokens = 0
        self.query_tokens = 0

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

    def _block_hashes(self, req: Request, num_full: int) -> list[BlockHash]:
        hashes = self._hashes.setdefault(req.request_id, [])
        tokens, bs = req.all_token_ids, self.block_size
        while len(hashes) < num_full:
            i = len(hashes)
            hashes.append(prefix_hash(hashes[-1] if hashes else None, tokens[i * bs:(i + 1) * bs]))
        return hashes[:num_full]

    def find_prefix(self, req: Request) -> PrefixHits:
        hits = PrefixHits([])
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None:
            return hits
        for h in self._block_hashes(req, (req.num_tokens - 1) // self.block_size):
            block = self.pool.cached.get(h)
            if block is not None and not hits.host:
                hits.device.append(block)
                continue
            held = self.host.lookup(h) if self.host is not None else None
            if held is None:
                break
            hits.host.append(held)
        return hits

    def allocate_slots(self, req: Request, num_new_tokens: int,
                       hits: Optional[PrefixHits] = None,
                       num_lookahead: int = 0) -> Optional[list[int]]:
        """`hits` (from find_prefix) is given at admission only; it may be empty. Host
        hits get the first new blocks, and their copies back are scheduled."""
        admission, hits = hits is not None, hits or PrefixHits([])
        owned = self._blocks.setdefault(req.request_id, [])
        total = (req.num_computed_tokens + hits.num_blocks * self.block_size + num_new_tokens
                 + num_lookahead)
        need = self.blocks_needed(total) - len(owned) - len(hits.device)
        free_hits = sum(1 for b in hits.device if self.pool.is_free(b))
        if max(need, 0) + free_hits > self.pool.num_free_blocks:
            return None
        if admission and self.enable_prefix_caching:
            self.query_tokens += req.num_tokens
            self.hit_tokens += hits.num_blocks * self.block_size
            self.host_hit_tokens += len(hits.host) * self.block_size
        for held in hits.host:  # never reused for this step's evictions
            self.host.pin(held)
        self.pool.touch(hits.device)
        owned.extend(hits.device)
        new = self.pool.allocate(need) if need > 0 else []
        if hits.host:
            hashes = self._block_hashes(req, hits.num_blocks)[len(hits.device):]
            for held, block, h in zip(hits.host, new, hashes):
                self.swap_in.append((held, block))
                self.pool.register(block, h)  # its copy lands before any reader
            self.blocks_to_device += len(hits.host)
            self._num_registered[req.request_id] = hits.num_blocks
        owned.extend(new)
        return new

    def _save_evicted(self, block: int, block_hash: BlockHash) -> None:
        held = self.host.save(block_hash)
        if held is not None:
            self.swap_out.append((block, held))
            self.blocks_to_host += 1

    def take_copies(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """This step's (device, host) copies out and (host, device) copies back, for the
        SchedulerOutput; the host tier's pins end with them."""
        out, back = self.swap_out, self.swap_in
        self.swap_out, self.swap_in = [], []
        if self.host is not None:
            self.host.end_step()
        return out, back

    def cache_blocks(self, req: Request) -> None:
        """Register the request's full blocks whose tokens are all computed (or being
        computed by a scheduled step, which runs before any later reader) and known."""
        if not self.enable_prefix_caching:
            return
        owned = self._blocks.get(req.request_id, [])
        known = min(req.num_computed_tokens, req.num_tokens)
        num_full = min(known // self.block_size, len(owned))
        done = self._num_registered.get(req.request_id, 0)
        if num_full <= done:
            return
        hashes = self._block_hashes(req, num_full)
        for i in range(done, num_full):
            self.pool.register(owned[i], hashes[i])
        self._num_registered[req.request_id] = num_full

    def free(self, req: Request) -> None:
        owned = self._blocks.pop(req.request_id, [])
        self._hashes.pop(req.request_id, None)
        self._num_registered.pop(req.request_id, None)
        self.pool.free(list(reversed(owned)))
