"""Weight-only quantized GEMM for any number of rows, Triton: y = x @ W^T (+ bias), W
int8, fp8 or int4 (quant/formats.py) dequantized in registers, float32 accumulation.

Objects: `quant_gemm` (the launcher), `QuantGemmConfig` and `CONFIGS` (tiles by rows:
the table below), `pick_config` (CONFIG_OVERRIDES, the A/B knob, or the table),
`quant_gemm_ref` (= quant/formats.py's `quant_linear_ref`). Up to 16 rows, decode steps
take the skinny GEMM (kernels/skinny_gemm.py), which reads W once with every epilogue;
this kernel is for prefill chunks and large batches.
Shapes: x [M, K] in fp32 / fp16 / bf16, W [N, K] -> y [M, N] in x's dtype.

Flow: a 2-D grid of output tiles, BLOCK_N rows of W by BLOCK_M rows of x, numbered in
groups of GROUP_M tiles down M per column of N tiles (so the programs that run together
share W panels and x blocks in L2). Each walks K in BLOCK_K steps
(kernels/quant_tiles.py: `quant_dot`): W's tile [BLOCK_N, BLOCK_K] is widened (int8,
fp8: per-row scale after the loop) or dequantized group by group (int4: q * scale +
offset in x's dtype, BLOCK_K whole groups) in registers and multiplied, as the MMA's A
operand, by x^T's tile [BLOCK_K, BLOCK_M] from shared memory: acc [BLOCK_N, BLOCK_M]
= W x^T ("swap AB": on Hopper only the A operand may come from registers), stored
transposed into y. The converted W tile never touches memory.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from tessera.kernels.quant_tiles import fast_dequant, quant_args, quant_dot, row_scale
from tessera.quant.formats import QuantizedWeight, quant_linear_ref


class QuantGemmConfig(NamedTuple):
    block_m: int  # rows of x (the MMA's N)
    block_n: int  # rows of W (the MMA's M: 64 a warpgroup on Hopper)
    block_k: int  # columns a step (in groups: rounded to whole groups)
    num_warps: int
    num_stages: int
    group_m: int = 8  # tiles down M numbered together (L2 reuse)


# Tiles by rows of x (the first whose bound M fits), a first table from the compiled
# code, not yet timed (benchmarks/kernels/quant_gemm_sweep.py): W panels of 64 rows a
# warpgroup (4 warps), so no warp widens another's weights; wider x blocks as M grows,
# where the conversions are shared by more rows and the GEMM turns compute-bound.
CONFIGS = ((32, QuantGemmConfig(32, 64, 128, 4, 4)),
           (64, QuantGemmConfig(64, 64, 128, 4, 4)),
           (128, QuantGemmConfig(128, 64, 128, 4, 3)),
           (None, QuantGemmConfig(128, 128, 64, 8, 3)))
CONFIG_OVERRIDES: dict = {}  # A/B knob: (kind, M bound of CONFIGS) -> QuantGemmConfig


def pick_config(m: int, kind: str, group: int = 0) -> QuantGemmConfig:
    """CONFIGS' tiles for m rows (or CONFIG_OVERRIDES'), block_k in whole groups."""
    bound, cfg = next((b, c) for b, c in CONFIGS if b is None or m <= b)
    cfg = CONFIG_OVERRIDES.get((kind, bound), cfg)
    if group:
        cfg = cfg._replace(block_k=max(group, cfg.block_k // group * group))
    return cfg


@triton.jit
def _quant_gemm(x_ptr, w_ptr, s_ptr, o_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
                KIND: tl.constexpr, GROUP: tl.constexpr, FAST: tl.constexpr,
                HAS_BIAS: tl.constexpr, EVEN: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n  # GROUP_M tiles down M, for every column of N tiles
    first_m = pid // per_group * GROUP_M
    rows_here = tl.minimum(tiles_m - first_m, GROUP_M)  # the last group may be shorter
    pid_m = first_m + (pid % per_group) % rows_here
    pid_n = (pid % per_group) // rows_here
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of W [BLOCK_N]
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of x [BLOCK_M]
    n_ok = ns < N
    m_ok = ms < M
    KW = K  # W's row length in its elements (int4: bytes, two columns each)
    if KIND == "int4":
        KW = K // 2
    rows = w_ptr + ns.to(tl.int64)[:, None] * KW  # [BLOCK_N, 1]
    s_rows, o_rows = s_ptr, o_ptr
    if GROUP > 0:  # each row's K / GROUP scales (and offsets)
        s_rows = s_ptr + ns.to(tl.int64) * (K // GROUP)
        o_rows = o_ptr + ns.to(tl.int64) * (K // GROUP)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)  # W x^T
    for k0 in range(0, K, BLOCK_K):
        acc, _ = quant_dot(acc, acc, rows, rows, s_rows, s_rows, o_rows, o_rows, x_ptr, ms,
                           m_ok, n_ok, k0, K, stride_xm, KIND, GROUP, FAST, False, EVEN,
                           PRECISION, BLOCK_K)
    if GROUP == 0:  # int8 / fp8: one scale per row of W
        acc = row_scale(acc, s_ptr, ns, n_ok)
    if HAS_BIAS:
        acc += tl.load(b_ptr + ns, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + ms[None, :] * stride_ym + ns[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & m_ok[None, :])


def quant_gemm(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None,
               config: Optional[QuantGemmConfig] = None) -> torch.Tensor:
    """x [M, K] @ W^T (+ bias [N]) -> [M, N] in x's dtype, W = dequantize(qw) [N, K]
    (kernels/quant_tiles.py: `unsupported` says which weights it cannot take)."""
    qa = quant_args(qw)
    rows, k = x.shape
    n = qa.rows
    if qa.k != k:
        raise ValueError(f"quant_gemm: x has {k} columns but the weight is {(n, qa.k)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"quant_gemm: the bias must be [{n}], got {tuple(bias.shape)}")
    if rows == 0 or n == 0 or k == 0:  # nothing to read: the reference's empty/zero/bias
        return quant_gemm_ref(x, qw, bias)
    x = x.contiguous()
    bias = bias.contiguous() if bias is not None else None
    cfg = config or pick_config(rows, qa.KIND, qa.GROUP)
    if qa.GROUP:
        cfg = cfg._replace(block_k=max(qa.GROUP, cfg.block_k // qa.GROUP * qa.GROUP))
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(rows, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _quant_gemm[grid](
        x, qa.data, qa.scale, qa.offset, bias if bias is not None else qa.scale, y, rows, n, k,
        x.stride(0), y.stride(0), KIND=qa.KIND, GROUP=qa.GROUP, FAST=fast_dequant(x),
        HAS_BIAS=bias is not None, EVEN=n % cfg.block_n == 0 and k % cfg.block_k == 0,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # fp32 stays fp32
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


def quant_gemm_ref(x: torch.Tensor, qw: QuantizedWeight,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The float32 product of x and the dequantized W, rounded once to x's dtype."""
    return quant_linear_ref(x, qw, bias)
