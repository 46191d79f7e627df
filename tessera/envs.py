"""The environment variables Tessera reads: the one place for them, read when asked
(never at import).

- TRITON_INTERPRET=1 (Triton's own): kernels run under Triton's CPU interpreter (tests on
  a machine without a GPU; tests/conftest.py sets it). Kernels then skip programmatic
  dependent launch and round fp8 stores in PyTorch first (the interpreter's cast is wrong).

Every switch of Tessera's own is a config field (config.py, a `--flag` of the CLI), so it
reaches every worker process with the config; none is an environment variable.
"""
from __future__ import annotations

import os


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
