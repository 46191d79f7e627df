"""Model loading: from a Hugging Face folder, a GGUF file, or random weights.

Flow: `resolve_model(ModelConfig)` -> ModelSource (what kind, where, its ArchConfig);
`load_model(ModelConfig, source)` builds the model class on the target device and dtype,
then streams (name, tensor) pairs into `model.load_weights` (each parameter's
weight_loader shards and copies its piece) or fills random weights (`dummy`).
Only safetensors and GGUF are read: never pickle (`*.bin`, `*.pt`).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterator

import torch
from torch import nn

from tessera.config import ModelConfig
from tessera.default_model import default_model_path
from tessera.models.arch_config import ArchConfig, from_hf_dict
from tessera.models.registry import model_class
from tessera.models.shapes import NAMED_SHAPES, named_shape


@dataclasses.dataclass
class ModelSource:
    kind: str  # "hf" | "gguf" | "dummy"
    path: str  # folder, file, or shape name
    arch: ArchConfig


_HOW = "Give a Hugging Face folder (config.json + *.safetensors) or a .gguf file"


def resolve_model(cfg: ModelConfig) -> ModelSource:
    path = cfg.model or default_model_path()
    is_gguf = path.endswith(".gguf") or cfg.load_format == "gguf"
    if cfg.load_format == "dummy":
        if os.path.isdir(path):
            return ModelSource("dummy", path, _read_hf_arch(path))
        if is_gguf and os.path.isfile(path):
            return ModelSource("dummy", path, _read_gguf_arch(path))
        return ModelSource("dummy", path, named_shape(path))
    if is_gguf:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
        return ModelSource("gguf", path, _read_gguf_arch(path))
    if os.path.isdir(path):
        return ModelSource("hf", path, _read_hf_arch(path))
    hint = (f" {path!r} is a named shape: use load_format='dummy' for random weights."
            if path.lower().removeprefix("dummy:") in NAMED_SHAPES else "")
    raise FileNotFoundError(f"Model {path!r} does not exist. {_HOW}.{hint}")


def _read_hf_arch(folder: str) -> ArchConfig:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No config.json in {folder!r}. {_HOW}.")
    with open(config_path) as f:
        return from_hf_dict(json.load(f))


def _read_gguf_arch(path: str) -> ArchConfig:
    from tessera.models.gguf_loader import read_gguf_arch
    return read_gguf_arch(path)


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


def _fill_random(model: nn.Module, seed: int) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.data.fill_(1.0 if "norm" in name else 0.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)


def load_model(cfg: ModelConfig, source: ModelSource) -> nn.Module:
    device, dtype = cfg.torch_device, cfg.torch_dtype
    arch = source.arch
    old_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = model_class(arch)(arch)
    finally:
        torch.set_default_dtype(old_dtype)
    if source.kind == "dummy":
        _fill_random(model, cfg.seed)
    elif source.kind == "gguf":
        from tessera.models.gguf_loader import iter_gguf_weights
        from tessera.models.gguf_loader import count_gguf_tensors
        model.load_weights(_progress(iter_gguf_weights(source.path, arch),
                                     count_gguf_tensors(source.path)))
    else:
        model.load_weights(_progress(iter_safetensors(source.path),
                                     count_safetensors(source.path)))
    return model.eval()


def _progress(weights: Iterator[tuple[str, torch.Tensor]], total: int):
    """A progress bar over the checkpoint's tensors."""
    from tqdm import tqdm
    with tqdm(weights, desc="Loading weights", unit="tensor", total=total, mininterval=1.0) as bar:
        yield from bar
