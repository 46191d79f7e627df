"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed with
persistent input buffers.

Objects: DecodeGraphs. `capture(sizes)` records, for each bucket B, the model forward of
B one-token sequences reading only the static buffers (token ids, positions, cache slots,
block tables, context lengths), so a replay launches the whole forward at once instead
of ~10 kernels per layer from Python. `run(inputs)` copies a step's inputs into the
buffers, pads the batch to its bucket (padding rows write their K/V to a scratch block
and attend to it alone) and replays; it returns None when the step does not fit (a
prefill or mixed step, or a batch above the largest bucket), and the caller runs eagerly.
`replays` counts the steps that ran as a graph. With offloaded layers
(layers/weight_stream.py) a graph holds their copies on the side stream too; a replay
first waits for the copies an eager step before it queued.
"""
from __future__ import annotations

import bisect
import logging
from typing import Optional

import torch

from tessera.layers.attention import AttentionMetadata
from tessera.worker.input_batch import StepInputs

logger = logging.getLogger(__name__)


def default_buckets(max_batch: int, every_upto: int = 1) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, then steps of 16 and 32; every size up to
    `every_upto` (speculative decoding: a verify step of k + 1 rows pads to no more)."""
    sizes = ([1, 2, 4, 8] + list(range(1, every_upto + 1)) + list(range(16, 257, 16))
             + list(range(288, 513, 32)))
    return sorted({s for s in sizes if s < max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(self, model, kv_caches: list[torch.Tensor], max_batch: int, max_blocks: int,
                 scratch_block: int, block_size: int, device: torch.device,
                 weight_stream=None):
        self.model, self.kv_caches = model, kv_caches
        self.weight_stream = weight_stream  # offloaded layers: their copies are in the graphs
        self.scratch_slot = scratch_block * block_size
        self.scratch_block = scratch_block
        self.max_blocks = max_blocks
        i64 = dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(max_batch, **i64)
        self.positions = torch.zeros(max_batch, **i64)
        self.slot_mapping = torch.full((max_batch,), self.scratch_slot, **i64)
        self.block_tables = torch.full((max_batch, max_blocks), scratch_block, **i64)
        self.seq_lens = torch.ones(max_batch, **i64)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.sizes: list[int] = []
        self.pool = None
        self.replays = 0

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping[:batch], num_decode_tokens=batch,
                                 decode_block_tables=self.block_tables[:batch],
                                 decode_seq_lens=self.seq_lens[:batch])

    @torch.inference_mode()
    def capture(self, sizes: list[int]) -> None:
        for batch in sorted(sizes, reverse=True):  # largest first: the pool fits the rest
            meta = self._meta(batch)
            args = (self.input_ids[:batch], self.positions[:batch], self.kv_caches, meta)
            for _ in range(2):  # compile kernels, create cuBLAS handles
                self.model(*args)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                hidden = self.model(*args)
            self.pool = graph.pool()
            self.graphs[batch] = (graph, hidden)
        self.sizes = sorted(self.graphs)
        self._reset_padding(max(self.sizes))
        torch.cuda.synchronize()

    def _reset_padding(self, upto: int) -> None:
        self.slot_mapping[:upto].fill_(self.scratch_slot)
        self.block_tables[:upto].fill_(self.scratch_block)
        self.seq_lens[:upto].fill_(1)

    def run(self, inputs: StepInputs) -> Optional[torch.Tensor]:
        meta = inputs.meta
        batch = inputs.input_ids.shape[0]
        if not meta.decode_only or not self.sizes or batch > self.sizes[-1]:
            return None
        width = meta.decode_block_tables.shape[1]
        if width > self.max_blocks:
            return None
        bucket = self.sizes[bisect.bisect_left(self.sizes, batch)]
        self.input_ids[:batch].copy_(inputs.input_ids)
        self.positions[:batch].copy_(inputs.positions)
        self.slot_mapping[:batch].copy_(meta.slot_mapping)
        self.block_tables[:batch, :width].copy_(meta.decode_block_tables)
        self.seq_lens[:batch].copy_(meta.decode_seq_lens)
        if bucket > batch:
            self.slot_mapping[batch:bucket].fill_(self.scratch_slot)
            self.seq_lens[batch:bucket].fill_(1)
            self.block_tables[batch:bucket, 0].fill_(self.scratch_block)
        graph, hidden = self.graphs[bucket]
        if self.weight_stream is not None:  # an eager step's last copies come first
            self.weight_stream.join()
        graph.replay()
        self.replays += 1
        return hidden[:batch]
