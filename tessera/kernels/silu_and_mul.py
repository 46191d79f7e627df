"""SiLU-and-mul, Triton: out = silu(gate) * up over x = [gate | up]; its definition:
`silu_and_mul_ref` (kernels/reference.py).

x: [T, 2d] -> [T, d]. silu runs in float32 and is rounded to the activations' dtype
before the multiply, as the unfused PyTorch ops round. `silu_mul` is that rounding on
tiles, shared with the epilogues of the skinny GEMM and the fused MoE's gate/up GEMM.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args


@triton.jit
def _silu_and_mul(x_ptr, out_ptr, d, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < d
    gate = tl.load(x_ptr + row * 2 * d + cols, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * 2 * d + d + cols, mask=ok, other=0.0)
    tl.store(out_ptr + row * d + cols, silu_mul(gate, up), mask=ok)


@triton.jit
def silu_mul(gate, up):
    """silu(gate) * up for gate, up in the activations' dtype: silu in float32, rounded to
    that dtype before the multiply."""
    g = gate.to(tl.float32)
    act = (g * tl.sigmoid(g)).to(gate.dtype)
    return (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)


def silu_and_mul(x: torch.Tensor, pdl: bool = True) -> torch.Tensor:
    x = x.contiguous()
    rows, d = x.shape[0], x.shape[1] // 2
    out = torch.empty(rows, d, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(d))
    _silu_and_mul[(rows, triton.cdiv(d, block))](x, out, d, BLOCK=block,
                                                 **pdl_launch_args(x.device, pdl))
    return out
