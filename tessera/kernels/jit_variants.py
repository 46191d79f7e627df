"""Which variants of Tessera's Triton kernels are compiled on a device.

Triton compiles a kernel again for every new combination of its constexprs and of the
properties it specializes arguments on (integers equal to 1 or divisible by 16, pointers
16-byte aligned). A compile takes ~0.5-1 s of host time, so one inside a serving step
stalls it: arguments that vary from step to step (table widths, split counts) are marked
`do_not_specialize`, step inputs are aligned (worker/input_batch.py), the warm-up steps
(worker/warm_up.py) meet the remaining variants, and benchmarks/gpu_idle.py and a GPU
test check with `compiled_keys()` that a started engine compiles nothing while it serves.

Objects: `tessera_kernels()` (name -> JIT function, from the modules of this package) and
`compiled_keys(device)` (name -> specialization keys of the variants compiled so far;
{} without CUDA).
"""
from __future__ import annotations

import importlib
import pkgutil

import torch

import tessera.kernels


def tessera_kernels() -> dict:
    """Name ("module.function") -> every Triton function defined in this package (JIT, or
    interpreted under TRITON_INTERPRET=1)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    found = {}
    for info in pkgutil.iter_modules(tessera.kernels.__path__):
        module = importlib.import_module(f"tessera.kernels.{info.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, (JITFunction, InterpretedFunction))
                    and obj.fn.__module__ == module.__name__):
                found[f"{info.name}.{name}"] = obj
    return found


def compiled_keys(device: torch.device | None = None) -> dict[str, list[str]]:
    """Kernel name -> the specialization keys of its compiled variants on `device` (the
    current CUDA device by default); kernels never launched there are left out."""
    if not torch.cuda.is_available():
        return {}
    index = torch.cuda.current_device() if device is None else device.index or 0
    keys = {}
    for name, fn in tessera_kernels().items():
        caches = getattr(fn, "device_caches", None)
        if caches is not None and index in caches and caches[index][0]:
            keys[name] = [str(k) for k in caches[index][0]]
    return keys

