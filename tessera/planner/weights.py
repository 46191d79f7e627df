"""A model's weight bytes under a precision, as the engine holds and reads them.

Objects: BYTES_PER_WEIGHT (a precision's bytes a weight, scales counted), PRECISIONS,
RANK (a precision's place from the least perplexity cost to the most), DEFAULT_CANDIDATES
(`precision: auto`'s: planner/precision.py), `by_accuracy(names)`,
`ModelBytes(arch, precision, lm_head)` with `.stored` (bytes the weights take on the
devices) and `.read(active_only)` (bytes one decode step reads: every layer's weights, or
one token's experts, and the LM head; of the embedding table a step reads only its rows).

The engine's policy (tessera/quant_policy.py) decides the counts: the linear layers take the
precision; the embedding table and the norms stay 16-bit; the LM head stays 16-bit unless
lm_head names a precision (`--lm-head-quantization`). A tied model whose head stays 16-bit
reads the embedding table as its head; one whose head is quantized holds a quantized copy
beside the 16-bit table. No torch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from tessera.models.arch_config import ArchConfig
from tessera.quant_policy import KINDS

BYTES_PER_WEIGHT = {"bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "fp8": 1.0,
                    "int4": 0.53}  # int8 / fp8: a scale a row; int4: a scale and offset a 128
PRECISIONS = tuple(BYTES_PER_WEIGHT)
# Perplexity cost over 16-bit, as benchmarks/RESULTS.md measured it on SmolLM2-135M and
# Qwen2.5-Coder-0.5B / 1.5B (2026-12-05): int8 +0.09-0.34%, fp8 (W8A8 on GPUs of compute
# capability 8.9+) +0.64-2.64%, int4 +0.6-7.8% (groups of 32-128)
RANK = {"bfloat16": 0, "float16": 0, "int8": 1, "fp8": 2, "int4": 3}
DEFAULT_CANDIDATES = ("bfloat16", "int8", "fp8")  # `precision: auto`'s; int4 where listed
HEAD_PRECISIONS = tuple(k for k in KINDS if k != "none")  # what an LM head may be made


@dataclasses.dataclass(frozen=True)
class ModelBytes:
    arch: ArchConfig
    precision: str = "bfloat16"  # the linear layers'
    lm_head: Optional[str] = None  # None: 16-bit (or as a 16-bit model's)

    def __post_init__(self):
        if self.precision not in BYTES_PER_WEIGHT:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.lm_head is not None and self.lm_head not in HEAD_PRECISIONS:
            raise ValueError(f"an LM head precision {self.lm_head!r} is not one of "
                             f"{', '.join(HEAD_PRECISIONS)}")

    @property
    def _embedding(self) -> int:
        """Parameters of the embedding table (as many again in an untied LM head)."""
        return self.arch.vocab_size * self.arch.hidden_size

    @property
    def _norms(self) -> int:
        return (2 * self.arch.num_layers + 1) * self.arch.hidden_size

    @property
    def _head_bytes(self) -> float:
        """Bytes of the LM head a step reads: its own precision, else 16-bit."""
        return self._embedding * BYTES_PER_WEIGHT[self.lm_head or "bfloat16"]

    def _layers(self, active_only: bool) -> int:
        """Parameters of the linear layers (what the precision applies to)."""
        tables = self._embedding * (1 if self.arch.tie_word_embeddings else 2)
        return self.arch.num_parameters(active_only) - tables - self._norms

    @property
    def stored(self) -> float:
        body = self._layers(False) * BYTES_PER_WEIGHT[self.precision] + self._norms * 2.0
        own_head = not self.arch.tie_word_embeddings or self.lm_head is not None
        return body + self._embedding * 2.0 + (self._head_bytes if own_head else 0.0)

    def read(self, active_only: bool = True) -> float:
        return (self._layers(active_only) * BYTES_PER_WEIGHT[self.precision]
                + self._norms * 2.0 + self._head_bytes)


def by_accuracy(names: list[str]) -> tuple[str, ...]:
    """The distinct names, the most precise (least RANK) first."""
    return tuple(sorted(dict.fromkeys(names), key=lambda p: RANK[p]))
