"""What the model runner needs of a model: the CausalLM interface, and KVCacheSpec.

A model class (registered in models/registry.py) is built from an ArchConfig inside the
worker's layer context (layers/context.py) and then offers:
- `forward(input_ids [T], positions [T], kv_caches, meta, intermediate=None)` -> hidden
  [T, H] (a last pipeline stage) or (hidden, residual) for the next stage;
- `compute_logits(hidden [N, H], as_float=True)` -> [N, vocab];
- `load_weights(iterable of (Hugging Face name, tensor or lazy slice))`, each parameter's
  weight_loader keeping its own part;
- `kv_cache_specs()` -> one KVCacheSpec per local layer: the runner sizes and allocates
  the paged cache from these, never from the architecture directly;
- `num_local_layers`.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterable, Optional, Protocol

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    num_kv_heads: int  # this rank's (or a replica's) KV heads
    head_dim: int
    sliding_window: Optional[int] = None

    def bytes_per_block(self, block_size: int, itemsize: int) -> int:
        """K and V of one block of this layer."""
        return 2 * block_size * self.num_kv_heads * self.head_dim * itemsize


class CausalLM(Protocol):
    num_local_layers: int

    def forward(self, input_ids: "torch.Tensor", positions: "torch.Tensor",
                kv_caches: list["torch.Tensor"], meta, intermediate=None): ...

    def compute_logits(self, hidden: "torch.Tensor", as_float: bool = True) -> "torch.Tensor": ...

    def load_weights(self, weights: Iterable[tuple[str, object]]) -> None: ...

    def kv_cache_specs(self) -> list[KVCacheSpec]: ...
