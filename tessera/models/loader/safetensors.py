"""Safetensors checkpoints: the weight files of a Hugging Face folder, read lazily.

`safetensors_files(folder)` (sharded through model.safetensors.index.json, or every
*.safetensors; pickle files are refused, never read), `iter_safetensors(folder)` ->
(name, lazy slice): a weight loader reads only the part its rank keeps,
`count_safetensors(folder)` for the progress bar.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator


def safetensors_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(folder, n) for n in names]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that are missing: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        pickled = glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pt"))
        extra = " (found pickle *.bin/*.pt files, which Tessera never loads)" if pickled else ""
        raise FileNotFoundError(f"No *.safetensors weights in {folder!r}{extra}.")
    return files


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
