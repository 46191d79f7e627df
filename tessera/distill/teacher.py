"""The teacher's targets: its top-k logits at every position of the training sequences.

Objects:
- `top_k_logits(teacher, tokens, k, device, autocast)`: the teacher's forward (no grad) on
  token ids [B, L], keeping per position the k largest logits and their token ids:
  (ids [B, L, k] int64, logits [B, L, k] float32), on the CPU.
- `LiveTargets`: computed when a batch asks for them (the teacher stays in memory).
- `CachedTargets`: computed once for every training sequence and stored in a safetensors
  file (`targets.safetensors`: `ids` int32 [N, L, k], `logits` float32 [N, L, k]) with a
  JSON sidecar naming the teacher file, k and the data's fingerprint; a cache made from
  other inputs is rebuilt, never trusted. Read back memory-mapped, a row at a time.
Both answer `get(indices) -> (ids, logits)` for the sequences' indices.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Sequence

import torch

from tessera.distill.data import Sequences

logger = logging.getLogger("tessera.distill")


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on a GPU when enabled; nothing on the CPU (fp32 there)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def top_k_logits(teacher, tokens: torch.Tensor, k: int, device: torch.device,
                 autocast: bool = True, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L, k] int64, logits [B, L, k] float32) on the CPU, `rows` sequences at a
    time so the full [rows, L, V] logits bound the memory."""
    ids, values = [], []
    for start in range(0, tokens.shape[0], rows):
        chunk = tokens[start:start + rows].to(device)
        with autocast_for(device, autocast):
            logits = teacher(input_ids=chunk).logits  # [b, L, V]
        top = logits.float().topk(k, dim=-1)
        ids.append(top.indices.cpu())
        values.append(top.values.cpu())
    return torch.cat(ids), torch.cat(values)


class LiveTargets:
    def __init__(self, teacher, seqs: Sequences, k: int, device: torch.device, autocast: bool):
        self.teacher, self.seqs, self.k = teacher, seqs, k
        self.device, self.autocast = device, autocast

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return top_k_logits(self.teacher, self.seqs.tokens[list(indices)], self.k,
                            self.device, self.autocast)


def _teacher_identity(path: str) -> dict:
    stat = os.stat(path if os.path.isfile(path) else os.path.join(path, "config.json"))
    return {"teacher": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class CachedTargets:
    FILE, META = "targets.safetensors", "targets.json"

    def __init__(self, folder: str, teacher_path: str, teacher, seqs: Sequences, k: int,
                 data_fingerprint: str, device: torch.device, autocast: bool,
                 batch: int = 8):
        from safetensors import safe_open
        from safetensors.torch import save_file
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, self.FILE)
        meta = {**_teacher_identity(teacher_path), "k": k, "data": data_fingerprint,
                "sequences": len(seqs), "seq_len": seqs.tokens.shape[1]}
        meta_path = os.path.join(folder, self.META)
        old = json.load(open(meta_path)) if os.path.isfile(meta_path) else None
        if old != meta or not os.path.isfile(self.path):
            if old is not None:
                logger.info("teacher cache %s was made from other inputs: rebuilding", folder)
            if teacher is None:
                raise ValueError(f"the teacher cache in {folder} does not match this run and "
                                 "there is no teacher to rebuild it")
            logger.info("teacher: top-%d logits of %d sequences into %s", k, len(seqs), folder)
            ids, values = [], []
            for start in range(0, len(seqs), batch):
                i, v = top_k_logits(teacher, seqs.tokens[start:start + batch], k, device,
                                    autocast)
                ids.append(i.to(torch.int32))
                values.append(v)
            save_file({"ids": torch.cat(ids), "logits": torch.cat(values)}, self.path)
            with open(meta_path, "w") as f:
                json.dump(meta, f)
        self._file = safe_open(self.path, framework="pt")

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, values = self._file.get_slice("ids"), self._file.get_slice("logits")
        return (torch.cat([ids[i:i + 1] for i in indices]).long(),
                torch.cat([values[i:i + 1] for i in indices]))
