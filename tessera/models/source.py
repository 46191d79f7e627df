"""Where a model comes from: a Hugging Face folder, a GGUF file, or a named shape.

`resolve_source(ModelConfig)` -> ModelSource (what kind, where, its ArchConfig), reading
only metadata (config.json; the GGUF header, where a GGUF file's tensor names and types
are checked too), never weights, and no torch: the front end calls it once
(frontend/model_info.py) and the result travels with the config.
Only safetensors and GGUF are ever read: never pickle (`*.bin`, `*.pt`).
"""
from __future__ import annotations

import dataclasses
import json
import os

from tessera.config import ModelConfig
from tessera.default_model import default_model_path
from tessera.models.arch_config import ArchConfig
from tessera.models.registry import check_supported, from_hf_dict
from tessera.models.shapes import NAMED_SHAPES, named_shape


@dataclasses.dataclass
class ModelSource:
    kind: str  # "hf" | "gguf" | "dummy"
    path: str  # folder, file, or shape name
    arch: ArchConfig


_HOW = "Give a Hugging Face folder (config.json + *.safetensors) or a .gguf file"


def resolve_source(cfg: ModelConfig) -> ModelSource:
    source = _resolve(cfg)
    check_supported(source.arch.architecture)
    return source


def _resolve(cfg: ModelConfig) -> ModelSource:
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
        arch = _read_gguf_arch(path)
        _check_gguf_tensors(path)  # names and types from the header, before any weight
        return ModelSource("gguf", path, arch)
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
    from tessera.models.gguf_meta import read_gguf_arch
    return read_gguf_arch(path)


def _check_gguf_tensors(path: str) -> None:
    from tessera.models.gguf_meta import open_reader
    from tessera.models.gguf_names import check_gguf_tensors
    check_gguf_tensors(open_reader(path), path)
