"""The ops a model runs, each a Triton kernel or its PyTorch definition, chosen once.

Objects: ReferenceOps (the definitions of kernels/reference.py: what runs on the CPU, and
without Triton installed), KernelOps (the Triton kernels of kernels/, passing the
engine's PDL switch; on the CPU they run only under TRITON_INTERPRET=1, for tests) and
`make_ops(KernelConfig, device)`, which picks one when a worker builds its model
(layers/context.py): "auto" takes the kernels on CUDA (where Triton is installed) and the
references elsewhere. Layers keep the ops they were built with; nothing is decided per
call from global state.
Ops: rms_norm (with the residual add), silu_and_mul, rotary_kv_write (rotate q and k, write
k and v to the paged cache), attention (decode rows first, then ragged prefill chunks, over
the paged cache), argmax, apply_token_bitmask (structured outputs' mask on the logits, in
place; the sampler takes it through SamplingBatch.apply_mask). `decodes_first` tells the
input preparation (worker/input_batch.py) to put one-token sequences first, for the decode
kernel.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Optional

import torch

from tessera.config import KernelConfig
from tessera.kernels.reference import (apply_token_bitmask_ref, argmax_ref,
                                       paged_attention_ref, rms_norm_ref, rotary_kv_write_ref,
                                       silu_and_mul_ref)

logger = logging.getLogger(__name__)


class ReferenceOps:
    kernels = False
    decodes_first = False

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None):
        """x [T, H] -> norm [T, H]; with residual: (norm(x + residual), x + residual)."""
        return rms_norm_ref(x, weight, eps, residual)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul_ref(x)  # [T, 2d] -> [T, d]

    def rotary_kv_write(self, q, k, v, positions, cos_sin, kv_cache, slot_mapping):
        return rotary_kv_write_ref(q, k, v, positions, cos_sin, kv_cache, slot_mapping)

    def attention(self, q: torch.Tensor, kv_cache: torch.Tensor, meta, scale: float,
                  sliding_window: Optional[int]) -> torch.Tensor:
        """Rotated q [T, Hq, D], this step's K/V already in the cache -> [T, Hq, D]."""
        if meta.num_decode_tokens:
            raise ValueError("the reference attention takes ragged sequences, not decode rows")
        return paged_attention_ref(q, kv_cache, meta.ragged, scale, sliding_window)

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        return argmax_ref(x)  # [N, V] -> [N]

    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        apply_token_bitmask_ref(logits, bitmask)  # [N, V] in place; bitmask [N, W] int32


class KernelOps(ReferenceOps):
    kernels = True
    decodes_first = True

    def __init__(self, pdl: bool = True):
        from tessera.kernels import (argmax, paged_decode_attention, paged_prefill_attention,
                                     rms_norm, rotary_kv_write, silu_and_mul, token_bitmask)
        self.pdl = pdl
        self._argmax, self._decode = argmax, paged_decode_attention
        self._bitmask = token_bitmask
        self._prefill, self._norm = paged_prefill_attention, rms_norm
        self._rotary, self._silu = rotary_kv_write, silu_and_mul

    def rms_norm(self, x, weight, eps, residual=None):
        return self._norm.rms_norm(x, weight, eps, residual, pdl=self.pdl)

    def silu_and_mul(self, x):
        return self._silu.silu_and_mul(x, pdl=self.pdl)

    def rotary_kv_write(self, q, k, v, positions, cos_sin, kv_cache, slot_mapping):
        return self._rotary.rotary_kv_write(q, k, v, positions, cos_sin, kv_cache,
                                            slot_mapping, pdl=self.pdl)

    def attention(self, q, kv_cache, meta, scale, sliding_window):
        nd = meta.num_decode_tokens
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, Hq, D]: decodes first
        if nd:
            self._decode.paged_decode_attention(
                q[:nd], kv_cache, meta.decode_block_tables, meta.decode_seq_lens, scale,
                sliding_window, out=out[:nd], pdl=self.pdl)
        r = meta.ragged
        if r is not None:
            self._prefill.paged_prefill_attention(
                q[nd:], kv_cache, r.block_tables, r.seq_lens, r.query_start, r.max_query_len,
                scale, sliding_window, out=out[nd:])
        return out

    def argmax(self, x):
        """The split-row kernel (PyTorch's one-block reduction takes ~26 us for 128k
        logits); float64 goes to torch."""
        if x.dtype in self._argmax.DTYPES:
            return self._argmax.argmax_rows(x, pdl=self.pdl)
        return argmax_ref(x)

    def apply_token_bitmask(self, logits, bitmask):
        self._bitmask.apply_token_bitmask(logits, bitmask)


def make_ops(kernel: KernelConfig, device: torch.device) -> ReferenceOps:
    backend = kernel.kernel_backend
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and _has_triton() else "reference"
        if device.type == "cuda" and backend == "reference":
            logger.warning("Triton is not installed: the model runs PyTorch's ops, slowly")
    if backend == "reference":
        return ReferenceOps()
    if not _has_triton():
        raise ValueError("kernel_backend 'triton' needs the triton package "
                         "(pip install triton), or choose kernel_backend auto or reference.")
    return KernelOps(kernel.pdl)


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
