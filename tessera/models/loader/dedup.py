"""Weights stored once: parameters with identical contents share one tensor.

`share_identical(model, device, exclude) -> bytes saved`. A checkpoint may hold the same matrix
twice (an LM head equal to the embedding without `tie_word_embeddings`, blocks repeated
at several depths): after loading, the parameters on the device of at least MIN_ELEMENTS
are grouped by shape and dtype, then by a hash of their contents at 4096 evenly spread
elements, and a candidate that is bitwise equal to an earlier parameter is pointed at that
one's tensor (its own memory is given back). Parameters of offloaded layers (in their own
store) are left alone. Models never write their weights after
loading, so sharing is invisible to them.
"""
from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIN_ELEMENTS = 4096
SAMPLES = 4096


def _fingerprint(p: torch.Tensor) -> bytes:
    flat = p.detach().reshape(-1)
    n = min(SAMPLES, flat.numel())
    idx = torch.arange(n, device=flat.device) * (flat.numel() - 1) // max(n - 1, 1)  # int64
    return hashlib.blake2b(flat[idx].view(torch.uint8).cpu().numpy().tobytes(),
                           digest_size=16).digest()


def _bits(p: torch.Tensor) -> torch.Tensor:
    return p.detach().reshape(-1).view(torch.uint8)


def share_identical(model: nn.Module, device: torch.device,
                    exclude: set[int] = frozenset()) -> int:
    """exclude: ids of parameters left alone (offloaded layers')."""
    seen: set[int] = set(exclude)
    groups: dict[tuple, list[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        if (id(p) in seen or p.numel() < MIN_ELEMENTS or p.device.type != device.type
                or not p.is_contiguous()):
            continue
        seen.add(id(p))
        groups.setdefault((tuple(p.shape), p.dtype), []).append(p)
    saved = 0
    for params in groups.values():
        if len(params) < 2:
            continue
        kept: dict[bytes, list[nn.Parameter]] = {}
        for p in params:
            same = kept.setdefault(_fingerprint(p), [])
            original = next((q for q in same if torch.equal(_bits(q), _bits(p))), None)
            if original is None:
                same.append(p)
                continue
            saved += p.numel() * p.element_size()
            p.data = original.data
    if saved:
        logger.info("weights stored once: identical tensors share memory, %.1f MiB saved",
                    saved / 2**20)
    return saved
