"""Keep torch out of the API process.

The API process tokenizes, renders chat templates and speaks HTTP: it has no use for
torch, and torch costs it seconds of start-up and hundreds of MB. transformers' tokenizers
work without it, but import it whenever they can find it. `keep_torch_out()`, called first
by `tessera serve`, makes torch unfindable in this process (a path finder that skips it),
so transformers runs in its tokenizers-only mode (its advisory line saying so is silenced:
TRANSFORMERS_NO_ADVISORY_WARNINGS). Child processes (the engine core, its workers) start
fresh interpreters and import torch as usual. What needs torch to build a tokenizer (a GGUF
file's: transformers' GGUF reader) runs in a subprocess (frontend/gguf_tokenizer.py).
`torch_kept_out()` says whether this process keeps it out.
"""
from __future__ import annotations

import logging
import os
import sys
from importlib.machinery import PathFinder

logger = logging.getLogger(__name__)


class _NoTorchFinder(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        return PathFinder.find_spec(name, path, target)


def keep_torch_out() -> None:
    if "torch" in sys.modules:
        logger.debug("torch is imported already: it stays")
        return
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    sys.meta_path[:] = [_NoTorchFinder if f is PathFinder else f for f in sys.meta_path]


def torch_kept_out() -> bool:
    return _NoTorchFinder in sys.meta_path
