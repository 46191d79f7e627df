"""fp8 activations in the skinny decode GEMM (kernels/skinny_gemm.py), Triton: an fp8 W
times fp8 x on the tensor cores, the activations quantized by each program itself; and
the same prep making a bf16 x fp16 for the X16 mode (skinny_gemm.FP16_X: an int8 / fp8 W
widened to fp16, the cheaper conversion; x times a power of two, so exactly).

Objects: jit `quantize_x` (e4m3 or fp16, by the scratch's dtype: `_multipliers`),
`a8_loop`; host `a8_capable(x)`, `prep_width(rows)`, `prep_constants(rows, k_per, prep)`,
PREP_DTYPES; the A8 reference's x is quant/fp8.py's `fake_quantize_splits(x, k_per)`
(X16's is x itself).

Why: a decode step of a few rows is bound by reading W, but widening an e4m3 W to bf16
in registers costs ~4.2 instructions a weight (SASS for sm_90, 32-row panels on 2 warps:
benchmarks/kernels/skinny_sass.py): at the memory's speed, about half of what an SM can
issue, from the few warps a skinny product has (on the H200 the widening path reaches
63% of the roofline at batch 1). With x in e4m3 too, the product is Hopper's fp8 MMA
(wgmma, 64-row panels on a warpgroup), which reads both operands from shared memory:
~0.95 a weight, no widening, as the bf16 path's ~0.8 a byte. The activations are
quantized as quant/fp8.py's W8A8 quantizes them (a row's scale max|x| / 448, its values
in e4m3 within +-448), over the columns [k_lo, k_hi) a program takes (its split of K:
kernels/split_k.py) rather than over the whole row, so no program waits for another: a
finer scale, never a coarser one.

Flow (`_skinny_gemm` with A8, after the PDL wait): `quantize_x` reads x's M rows over
the program's columns (once where they fit a prep step, else twice: max|x|, then x times
448 / max|x|, from L2), stores the e4m3 values in a scratch [M, K] (every program of a
split stores the same bytes), waits for its own threads' stores (a barrier) and gives
the scales at the accumulator's columns [BLOCK_M];
`a8_loop` then walks K as the widening loop does, the scratch's tile as the MMA's B
operand; the caller applies W's per-row scales and these after the loop (the sum is
linear, so before split-K's reduction), then every epilogue as for any W.
Reference: quant/fp8.py's `fake_quantize_splits(x, k_per)`, x as the kernel sees it
(each split's e4m3 values times its scales, float32), so the references of the widening
path hold with it.
Cost: each program quantizes its columns of x itself (SASS for sm_90: ~5 instructions an
element of M rows read once, ~8.5 read twice, against ~0.95 a weight of its 64 rows, 128
gated), so the mode is taken up to skinny_gemm.A8_MAX_ROWS rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera import envs
from tessera.kernels import pdl
from tessera.kernels.quant_tiles import stored

PREP_ELEMENTS = 2048  # elements of x a prep step holds: 16 a thread of a warpgroup
PREP_DTYPES = {"fp8": torch.float8_e4m3fn, "fp16": torch.float16}  # x_prep's -> the scratch's


def prep_width(rows: int) -> int:
    """Columns of x a prep step reads for `rows` rows (a power of two, >= 128)."""
    return max(128, PREP_ELEMENTS // triton.next_power_of_2(max(rows, 1)))


def prep_constants(rows: int, k_per: int, prep: bool) -> dict:
    """The kernel's XQ_ROWS, PREP_K and XQ_ONE_PASS for `rows` rows and k_per columns a
    program (the same for every product that makes nothing of x, so those compile once)."""
    if not prep:
        return dict(XQ_ROWS=1, PREP_K=128, XQ_ONE_PASS=False)
    width = prep_width(rows)
    return dict(XQ_ROWS=triton.next_power_of_2(rows), PREP_K=width, XQ_ONE_PASS=k_per <= width)


def a8_capable(x: torch.Tensor) -> bool:
    """Where the fp8 MMA runs: a Hopper-class GPU (wgmma), or Triton's interpreter."""
    if envs.triton_interpreted():
        return True
    return x.is_cuda and torch.cuda.get_device_capability(x.device) >= (9, 0)


@triton.jit
def _multipliers(peak, FP16: tl.constexpr):
    """A row's max|x| [ROWS] -> (what x is multiplied by, what undoes it) [ROWS] each.
    e4m3: 448 / max|x| (1 for zeros). fp16: 2^(14 - floor(log2 max|x|)), which puts
    max|x| in [2^14, 2^15) and so every bf16 value in fp16's range exactly (a power of
    two; built from the exponent bits, so no rounding of a logarithm can push it out)."""
    if FP16:
        e = (peak.to(tl.int32, bitcast=True) >> 23) - 127  # floor(log2 peak), peak >= 0
        e = tl.minimum(tl.maximum(e, -100), 127)  # zeros (and fp32 subnormals): any power
        inv = ((127 + 14 - e) << 23).to(tl.float32, bitcast=True)
        return inv, ((127 - 14 + e) << 23).to(tl.float32, bitcast=True)
    return 448.0 / tl.where(peak > 0, peak, 448.0), tl.where(peak > 0, peak / 448.0, 1.0)


@triton.jit
def quantize_x(x_ptr, xq_ptr, M, K, k_lo, k_hi, stride_xm, ms, ROWS: tl.constexpr,
               PREP_K: tl.constexpr, ONE_PASS: tl.constexpr):
    """x's rows [0, M) (ROWS >= M, a power of two) over columns [k_lo, k_hi) -> xq_ptr's
    dtype at xq_ptr (rows K long): e4m3, each row times 448 / its max|x| there (saturated
    by the conversion), or fp16, each row times a power of two (`_multipliers`); -> the
    scales that undo it at rows ms [BLOCK_M] (0 past M: those rows' sums are 0).
    ONE_PASS: the columns fit one step of PREP_K, read once; else twice (max|x|, then
    the values: from L2)."""
    xq_dt = xq_ptr.dtype.element_ty
    fp16 = xq_dt == tl.float16
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, PREP_K)
    r_ok = rows < M
    if ONE_PASS:
        kk = k_lo + cols
        ok = r_ok[:, None] & (kk < k_hi)[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=ok,
                    other=0.0).to(tl.float32)  # [ROWS, PREP_K]
        peak = tl.max(tl.abs(x), axis=1)  # [ROWS]
        inv, scale = _multipliers(peak, fp16)
        tl.store(xq_ptr + rows[:, None] * K + kk[None, :], (x * inv[:, None]).to(xq_dt), mask=ok)
    else:
        amax = tl.zeros([ROWS, PREP_K], tl.float32)
        for k0 in range(k_lo, k_hi, PREP_K):
            kk = k0 + cols
            ok = r_ok[:, None] & (kk < k_hi)[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=ok, other=0.0)
            amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
        peak = tl.max(amax, axis=1)
        inv, scale = _multipliers(peak, fp16)
        for k0 in range(k_lo, k_hi, PREP_K):
            kk = k0 + cols
            ok = r_ok[:, None] & (kk < k_hi)[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=ok, other=0.0)
            tl.store(xq_ptr + rows[:, None] * K + kk[None, :],
                     (x.to(tl.float32) * inv[:, None]).to(xq_dt), mask=ok)
    tl.debug_barrier()  # this program's stores are seen by all its threads' loads
    pick = (ms[:, None] == rows[None, :]) & r_ok[None, :]  # [BLOCK_M, ROWS]
    return tl.sum(tl.where(pick, scale[None, :], 0.0), axis=1)


@triton.jit
def a8_loop(acc, acc2, w_rows, rows2, xq_ptr, ms, m_ok, n_ok, K, k_lo, k_hi, trigger_k,
            TWO: tl.constexpr, EVEN: tl.constexpr, BLOCK_K: tl.constexpr,
            TRIGGER_STEPS: tl.constexpr, USE_PDL: tl.constexpr):
    """acc (acc2: TWO panels) [BLOCK_N, BLOCK_M] += W's e4m3 rows @ xq's tiles^T over
    [k_lo, k_hi), unscaled."""
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if TRIGGER_STEPS > 0:  # as the widening loop: the next kernel may launch from here
            if k0 == trigger_k:
                pdl.launch_dependents(USE_PDL)
        kk = k0 + ks
        xt = tl.load(xq_ptr + ms[None, :] * K + kk[:, None],
                     mask=(kk < K)[:, None] & m_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]
        acc = tl.dot(stored(w_rows, kk, n_ok, K, EVEN), xt, acc)
        if TWO:
            acc2 = tl.dot(stored(rows2, kk, n_ok, K, EVEN), xt, acc2)
    return acc, acc2
