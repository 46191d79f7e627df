"""KVHostTier: the bytes of the KV cache's host blocks (the engine's HostTier picks the ids:
engine/kv_cache/host_tier.py), and the copies between them and the device blocks.

Objects: KVHostTier(kv_caches, num_blocks, device). A host block holds one device block of
every local layer, K and V, packed: `store` [num_blocks, bytes_per_block] uint8, pinned on
a GPU (layer l's part at `offsets[l]`, shaped [2, block_size, kv_heads, head_dim]).
`apply(to_host, to_device)`, before a step's forward, on a side stream that first waits
for the work queued so far (the blocks going out may be written by the step before):
- to_host [(device block, host block)]: the device blocks are gathered layer by layer into
  a device staging buffer [n, bytes_per_block], then each row is copied to its host block;
- to_device [(host block, device block)]: each host block is copied into a staging row,
  then scattered layer by layer into its device block;
then the compute stream waits for the side stream (no host synchronization). Out before
back: a device block may be evicted and refilled in one step; the engine never reuses a
host block that is copied back in the same step. On the CPU the copies are plain copies.
`bytes_moved` counts both directions.
"""
from __future__ import annotations

import torch

from tessera.models.loader.offload_store import fits_host


class KVHostTier:
    def __init__(self, kv_caches: list[torch.Tensor], num_blocks: int, device: torch.device):
        self.kv_caches, self.device = kv_caches, device
        sizes = [kv[:, 0].numel() * kv.element_size() for kv in kv_caches]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = sizes
        self.bytes_per_block = sum(sizes)
        self.num_blocks = num_blocks
        cuda = device.type == "cuda"
        fits_host(num_blocks * self.bytes_per_block, "kv_offload_gb")
        self.store = torch.empty((num_blocks, self.bytes_per_block), dtype=torch.uint8,
                                 pin_memory=cuda)
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.bytes_moved = 0

    def _layer(self, rows: torch.Tensor, l: int) -> torch.Tensor:
        """Layer l's part of staging rows [n, bytes_per_block] -> [2, n, bs, heads, dim]."""
        kv = self.kv_caches[l]
        part = rows[:, self.offsets[l]:self.offsets[l] + self.sizes[l]]
        return part.view(kv.dtype).view(rows.shape[0], *kv.shape[:1], *kv.shape[2:]) \
            .transpose(0, 1)

    def apply(self, to_host: list[tuple[int, int]], to_device: list[tuple[int, int]]) -> None:
        if not to_host and not to_device:
            return
        if self.stream is None:
            self._copy(to_host, to_device)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self._copy(to_host, to_device)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def _copy(self, to_host, to_device) -> None:
        async_ = self.stream is not None
        if to_host:
            blocks = torch.tensor([d for d, _ in to_host], device=self.device)
            staging = torch.empty((len(to_host), self.bytes_per_block), dtype=torch.uint8,
                                  device=self.device)
            for l, kv in enumerate(self.kv_caches):
                self._layer(staging, l).copy_(kv[:, blocks])
            for row, (_, h) in enumerate(to_host):
                self.store[h].copy_(staging[row], non_blocking=async_)
        if to_device:
            blocks = torch.tensor([d for _, d in to_device], device=self.device)
            staging = torch.empty((len(to_device), self.bytes_per_block), dtype=torch.uint8,
                                  device=self.device)
            for row, (h, _) in enumerate(to_device):
                staging[row].copy_(self.store[h], non_blocking=async_)
            for l, kv in enumerate(self.kv_caches):
                kv[:, blocks] = self._layer(staging, l)
        self.bytes_moved += (len(to_host) + len(to_device)) * self.bytes_per_block
