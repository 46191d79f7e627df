"""The skinny decode GEMM's K loops over a quantized W, Triton (kernels/skinny_gemm.py runs
them; the tiles' dequantization is kernels/quant_tiles.py's).

Objects (jit): `quant_loop` (the loop: steps of `quant_tiles.quant_dot`, one or two
panels, under PDL; per-row scales after it), and its K-sliced steps (SkinnyConfig.slices):
`slice_cols` (a step's columns cut into slices), `slices_dot` (a per-row W, int8 / fp8),
`slices_group_dot` (W in groups, a group a slice; ON_ACC: int4's scales and offsets on
the float32 products), `_slices_loop`. A batched dot gives each of S warps its own slice
of K over all of a panel's rows (Triton puts a rank-3 dot's warps along its batch); the
S partial sums are added once after the loop.
"""
from __future__ import annotations

import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.quant_tiles import int4_halves, quant_dot, raw_bias, row_scale, widen


@triton.jit
def slice_cols(k0, SLICES: tl.constexpr, BLOCK_K: tl.constexpr):
    """The columns of one step cut into SLICES slices [SLICES, BLOCK_K / SLICES]."""
    width: tl.constexpr = BLOCK_K // SLICES
    return k0 + tl.arange(0, SLICES)[:, None] * width + tl.arange(0, width)[None, :]


@triton.jit
def slices_dot(acc, rows, xt, cols, n_ok, K, dt: tl.constexpr, FAST: tl.constexpr,
               EVEN: tl.constexpr, PRECISION: tl.constexpr):
    """One step of a per-row W (int8, fp8) as SLICES column slices, a batched dot:
    acc [S, R, BM] += W[rows, cols[s]] @ xt[s] for each slice s; cols [S, C], xt [S, C, BM].
    Triton gives a rank-3 dot's warps to its batch, so with S warps each walks its own
    slice of K over all R rows, and one x fragment serves all its row tiles."""
    ptrs = rows[None, :, :] + cols[:, None, :]  # [S, R, C]
    if EVEN:
        q = tl.load(ptrs)
    else:
        q = tl.load(ptrs, mask=n_ok[None, :, None] & (cols < K)[:, None, :], other=0.0)
    return tl.dot(widen(q, dt, FAST), xt, acc, input_precision=PRECISION)


@triton.jit
def slices_group_dot(acc, rows, s_rows, o_rows, xt, k0, n_ok, K, dt: tl.constexpr,
                     KIND: tl.constexpr, GROUP: tl.constexpr, FAST: tl.constexpr,
                     EVEN: tl.constexpr, PRECISION: tl.constexpr, SLICES: tl.constexpr,
                     ON_ACC: tl.constexpr = False):
    """`slices_dot` for W in groups (int4, grouped int8), a group a slice: W's columns
    [k0 + s GROUP, k0 + (s + 1) GROUP) dequantized to dt as `_group_tile` does, times
    xt [S, GROUP, BM]; s_rows, o_rows [R] pointers to the rows' scales and offsets.
    ON_ACC (int4): the nibbles go to the MMA as bias + q (`int4_halves` RAW) and the
    group's scale and offset apply to the float32 products, sum (s (bias + q) x) + (o -
    bias s) sum x, x's sums from a dot with ones: no FMA a weight, W never rounded to dt."""
    ss = tl.arange(0, SLICES)
    kg = k0 + ss * GROUP  # [S] each slice's first column
    ok = n_ok[None, :] & (kg < K)[:, None]  # [S, R]
    if KIND == "int4":
        cols = kg[:, None] // 2 + tl.arange(0, GROUP // 2)[None, :]  # [S, G / 2] bytes
        ptrs = rows[None, :, :] + cols[:, None, :]
        if EVEN:
            b = tl.load(ptrs)
        else:
            b = tl.load(ptrs, mask=ok[:, :, None] & (cols < K // 2)[:, None, :], other=0)
        lo, hi = int4_halves(b, dt, FAST, ON_ACC)  # ON_ACC: 128 + q
        q = tl.reshape(tl.join(lo, hi), [SLICES, b.shape[1], GROUP])
    else:
        cols = kg[:, None] + tl.arange(0, GROUP)[None, :]
        ptrs = rows[None, :, :] + cols[:, None, :]
        if EVEN:
            q = widen(tl.load(ptrs), dt, FAST)
        else:
            q = widen(tl.load(ptrs, mask=ok[:, :, None] & (cols < K)[:, None, :], other=0),
                      dt, FAST)
    at = (kg // GROUP)[:, None]  # [S, 1] the slices' groups
    if EVEN:
        sc = tl.load(s_rows[None, :] + at)
    else:
        sc = tl.load(s_rows[None, :] + at, mask=ok, other=0.0)  # [S, R]
    if KIND == "int4":
        if EVEN:
            o = tl.load(o_rows[None, :] + at)
        else:
            o = tl.load(o_rows[None, :] + at, mask=ok, other=0.0)
        if ON_ACC:  # [S, R, BM] products of bias + q, and x's sums over the group
            raw = tl.dot(q, xt, input_precision=PRECISION)
            sums = tl.dot(tl.full(q.shape, 1.0, dt), xt, input_precision=PRECISION)
            scale = sc.to(tl.float32)
            shift = o.to(tl.float32) - raw_bias(dt) * scale
            return acc + raw * scale[:, :, None] + sums * shift[:, :, None]
        w = tl.fma(q, sc.to(dt)[:, :, None], o.to(dt)[:, :, None])
    else:
        w = q * sc.to(dt)[:, :, None]
    return tl.dot(w, xt, acc, input_precision=PRECISION)


@triton.jit
def _slices_loop(acc, acc2, w_rows, rows2, s_rows, s_rows2, o_rows, o_rows2, n_ok, x_ptr, ms,
                 m_ok, K, k_lo, k_hi, stride_xm, trigger_k, KIND: tl.constexpr,
                 GROUP: tl.constexpr, FAST: tl.constexpr, TWO: tl.constexpr,
                 EVEN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, TRIGGER_STEPS: tl.constexpr,
                 USE_PDL: tl.constexpr, SLICES: tl.constexpr, ON_ACC: tl.constexpr):
    """`quant_loop`'s steps with K sliced among the warps (`slices_dot`; in groups, a group
    a slice: `slices_group_dot`): float32 sums [SLICES, BLOCK_N, BLOCK_M] a panel, added
    over the slices at the end."""
    tl.static_assert(GROUP == 0 or BLOCK_K == SLICES * GROUP, "in groups: a group a slice")
    dt = x_ptr.dtype.element_ty
    sums = tl.zeros([SLICES, BLOCK_N, BLOCK_M], tl.float32)
    sums2 = sums
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if TRIGGER_STEPS > 0:
            if k0 == trigger_k:
                pdl.launch_dependents(USE_PDL)
        cols = slice_cols(k0, SLICES, BLOCK_K)
        xt = tl.load(x_ptr + ms[None, None, :] * stride_xm + cols[:, :, None],
                     mask=(cols < K)[:, :, None] & m_ok[None, None, :], other=0.0)
        if GROUP > 0:
            sums = slices_group_dot(sums, w_rows, s_rows, o_rows, xt, k0, n_ok, K, dt, KIND,
                                    GROUP, FAST, EVEN, PRECISION, SLICES, ON_ACC)
            if TWO:
                sums2 = slices_group_dot(sums2, rows2, s_rows2, o_rows2, xt, k0, n_ok, K, dt,
                                         KIND, GROUP, FAST, EVEN, PRECISION, SLICES, ON_ACC)
        else:
            sums = slices_dot(sums, w_rows, xt, cols, n_ok, K, dt, FAST, EVEN, PRECISION)
            if TWO:
                sums2 = slices_dot(sums2, rows2, xt, cols, n_ok, K, dt, FAST, EVEN, PRECISION)
    acc += tl.sum(sums, 0)
    if TWO:
        acc2 += tl.sum(sums2, 0)
    return acc, acc2


@triton.jit
def quant_loop(acc, acc2, w_rows, rows2, scale_ptr, offset_ptr, ns, ns2, n_ok, x_ptr, ms,
               m_ok, K, k_lo, k_hi, stride_xm, trigger_k, KIND: tl.constexpr,
               GROUP: tl.constexpr, FAST: tl.constexpr, TWO: tl.constexpr, EVEN: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_K: tl.constexpr, TRIGGER_STEPS: tl.constexpr, USE_PDL: tl.constexpr,
               HALVES: tl.constexpr, SLICES: tl.constexpr = 1, ON_ACC: tl.constexpr = False):
    """The skinny GEMM's loop over columns [k_lo, k_hi) of a quantized W (`quant_dot`),
    one panel or two (TWO), onto float32 (acc, acc2) [BLOCK_N, BLOCK_M] (the sums of the
    columns before k_lo, unscaled) -> the sums, per-row scales applied. SLICES > 1 (as
    many warps): each step's columns sliced among the warps (`slices_dot`; in groups, a
    group a slice; ON_ACC: int4's scales on the products, `slices_group_dot`)."""
    s_rows, s_rows2, o_rows, o_rows2 = scale_ptr, scale_ptr, offset_ptr, offset_ptr
    if GROUP > 0:  # each row's K / GROUP scales (and offsets)
        s_rows = scale_ptr + ns.to(tl.int64) * (K // GROUP)
        o_rows = offset_ptr + ns.to(tl.int64) * (K // GROUP)
        s_rows2 = scale_ptr + ns2.to(tl.int64) * (K // GROUP)
        o_rows2 = offset_ptr + ns2.to(tl.int64) * (K // GROUP)
    if SLICES > 1:
        acc, acc2 = _slices_loop(acc, acc2, w_rows, rows2, s_rows, s_rows2, o_rows, o_rows2,
                                 n_ok, x_ptr, ms, m_ok, K, k_lo, k_hi, stride_xm, trigger_k,
                                 KIND, GROUP, FAST, TWO, EVEN, PRECISION, BLOCK_N, BLOCK_M,
                                 BLOCK_K, TRIGGER_STEPS, USE_PDL, SLICES, ON_ACC)
    else:
        for k0 in range(k_lo, k_hi, BLOCK_K):
            if TRIGGER_STEPS > 0:  # as the dense loop: the next kernel may launch from here
                if k0 == trigger_k:
                    pdl.launch_dependents(USE_PDL)
            acc, acc2 = quant_dot(acc, acc2, w_rows, rows2, s_rows, s_rows2, o_rows, o_rows2,
                                  x_ptr, ms, m_ok, n_ok, k0, K, stride_xm, KIND, GROUP, FAST,
                                  TWO, EVEN, PRECISION, BLOCK_K, HALVES)
    if GROUP == 0:  # int8 / fp8: w = q * scale, one scale per row
        acc = row_scale(acc, scale_ptr, ns, n_ok)
        if TWO:
            acc2 = row_scale(acc2, scale_ptr, ns2, n_ok)
    return acc, acc2
