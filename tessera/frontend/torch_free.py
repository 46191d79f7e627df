"""Keep torch out of the API process.

The API process tokenizes, renders chat templates and speaks HTTP: it has no use for
torch, and torch costs it seconds of start-up and hundreds of MB. transformers' tokenizers
work without it, but import it whenever they can find it. `keep_torch_out()`, called first
by `tessera serve`, makes torch unfindable in this process (a path finder that skips it),
so transformers runs in its tokenizers-only mode (its advisory line saying so is silenced:
TRANSFORMERS_NO_ADVISORY_WARNINGS). Child processes (the engine core, its workers) start
fresh interpreters and import torch as usual. What needs torch to build a tokenizer (a GGUF
file's: transformers' GGUF reader) runs in a subprocess (frontend/gguf_tokenizer.py).
`torch_kept_out()` says whether this process keeps it out; `hide_packages(*names)` is the
mechanism, for any top-level package (the tests hide Triton with it, as where it is not
installed).
"""
from __future__ import annotations

import logging
import os
import sys
from importlib.machinery import PathFinder

logger = logging.getLogger(__name__)


class _HidingFinder(PathFinder):
    """The path finder, except for the hidden top-level packages (and their modules)."""
    hidden: frozenset = frozenset()

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in cls.hidden:
            return None
        return PathFinder.find_spec(name, path, target)


def hide_packages(*names: str) -> None:
    """Makes these top-level packages unfindable in this process, as if not installed
    (modules already imported stay)."""
    _HidingFinder.hidden = _HidingFinder.hidden | frozenset(names)
    sys.meta_path[:] = [_HidingFinder if f is PathFinder else f for f in sys.meta_path]


def keep_torch_out() -> None:
    if "torch" in sys.modules:
        logger.debug("torch is imported already: it stays")
        return
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    hide_packages("torch")


def torch_kept_out() -> bool:
    return "torch" in _HidingFinder.hidden and _HidingFinder in sys.meta_path
