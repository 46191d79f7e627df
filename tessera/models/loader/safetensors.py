"""Safetensors checkpoints: the weight files of a Hugging Face folder, read lazily.

`safetensors_files(folder)` (models/checkpoint_quant.py: sharded through
model.safetensors.index.json, or every *.safetensors; pickle files are refused, never
read), `iter_safetensors(folder)` ->
(name, lazy slice): a weight loader reads only the part its rank keeps,
`count_safetensors(folder)` for the progress bar.
"""
from __future__ import annotations

from typing import Iterator

from tessera.models.checkpoint_quant import safetensors_files


def iter_safetensors(folder: str) -> Iterator[tuple[str, object]]:
    """(name, lazy slice): a weight loader reads only the part its rank keeps."""
    from safetensors import safe_open
    for file in safetensors_files(folder):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_slice(name)


def count_safetensors(folder: str) -> int:
    from safetensors import safe_open
    total = 0
    for file in safetensors_files(folder):
        with safe_open(file, framework="pt") as f:
            total += len(f.keys())
    return total
