"""Registry: architecture name -> its Hugging Face config translation and model class.

Each model family declares its architectures beside its model, in a module without torch
(`ARCHITECTURES` in models/llama_config.py for models/llama.py); `_FAMILIES` lists those
modules. `from_hf_dict(config.json contents)` -> ArchConfig through the named
architecture's own translation; `check_supported(name)` refuses others, naming the ones
there are; `model_class(arch)` imports the class only when a worker builds the model.
"""
from __future__ import annotations

import importlib
from typing import Any

from tessera.models import llama_config
from tessera.models.arch_config import ArchConfig, Architecture

_FAMILIES = (llama_config,)
_BY_NAME: dict[str, Architecture] = {a.name: a for f in _FAMILIES for a in f.ARCHITECTURES}
SUPPORTED_ARCHITECTURES = tuple(_BY_NAME)


def check_supported(name: str) -> Architecture:
    if name not in _BY_NAME:
        raise ValueError(f"Architecture {name!r} is not supported. "
                         f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)}.")
    return _BY_NAME[name]


def from_hf_dict(cfg: dict[str, Any]) -> ArchConfig:
    """Build an ArchConfig from the contents of a Hugging Face `config.json`."""
    archs = cfg.get("architectures") or []
    if not archs:
        raise ValueError("config.json names no 'architectures'; cannot tell which model this is.")
    entry = check_supported(archs[0])
    try:
        return entry.from_hf(cfg)
    except KeyError as e:
        raise ValueError(f"config.json lacks the field {e.args[0]!r} needed for "
                         f"{entry.name}.") from None


def model_class(arch: ArchConfig) -> type:
    """The torch module class serving `arch` (imported here, in the worker)."""
    module, name = check_supported(arch.architecture).model_class.split(":")
    return getattr(importlib.import_module(module), name)
