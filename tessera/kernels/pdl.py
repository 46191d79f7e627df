"""Programmatic dependent launch (PDL, Hopper and later) for the decode-path kernels.

A kernel launched with PDL may start while the kernel before it in the stream still runs;
it must wait (`gdc_wait`) before touching memory that earlier kernels write, and the
kernel before it lets it start early by calling `gdc_launch_dependents`. In a decode step
of a few rows every kernel is short, so this hides each launch and each GEMV's ramp-up
(it prefetches its first weight tile, which no kernel writes, before waiting).

Objects: `pdl_launch_args(device, enabled)` -> the launch keywords (USE_PDL for the
kernel's constexpr, launch_pdl for Triton's launcher). Every wrapper of a kernel that takes
part in PDL takes `pdl=` (on by default); the model's ops and linear method pass the
engine's KernelConfig.pdl (layers/ops.py, quant/unquantized.py). Jit
side, no-ops unless USE_PDL: `enter` (short kernels: let the next launch, then wait),
`wait` and `launch_dependents` (the skinny GEMM loads and prefetches weights before its
wait, and lets the next kernel launch a few steps before its loop ends:
skinny_gemm.TRIGGER_STEPS). Every kernel that takes USE_PDL waits
before its first access to activations, so a chain of such kernels keeps the stream's
order for all they read and write; kernels without it (cuBLAS, PyTorch's) wait for the
whole prior kernel as usual.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera import envs
from tessera.kernels.hardware import nvidia_sm90_or_later


def pdl_active(device: torch.device, enabled: bool = True) -> bool:
    """Enabled, on Hopper or later, and compiled (not under Triton's interpreter)."""
    return enabled and not envs.triton_interpreted() and nvidia_sm90_or_later(device)


def pdl_launch_args(device: torch.device, enabled: bool = True) -> dict:
    """Keyword arguments for a kernel launch: USE_PDL always, launch_pdl when on."""
    if pdl_active(device, enabled):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@triton.jit
def enter(USE_PDL: tl.constexpr):
    """A short kernel's start: let the next kernel launch, then wait for the one before.
    (All of this kernel's programs are resident once the next one launches, so the chain
    cannot starve them; on the H100 this beat waiting first, 173.9 vs 170.5 tok/s.)"""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


@triton.jit
def wait(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def launch_dependents(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
