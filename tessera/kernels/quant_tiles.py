"""Dequantizing weight tiles in registers, Triton: the pieces shared by the skinny decode
GEMM (kernels/skinny_gemm.py) and the tiled quantized GEMM (kernels/quant_gemm.py).

Objects (formats: quant/formats.py). Jit: `quant_dot` (one K step of a quantized W as the
MMA's A operand, one or two panels sharing x's tile; the skinny GEMM's loops of them:
kernels/quant_loops.py), `row_scale` (per-row scales on the accumulator), `widen` (an int8
or fp8 tile -> the activations' dtype, exactly), `int4_halves` / `int4_tile` (packed int4
bytes [R, C] -> the low and high nibbles [R, C], or interleaved [R, 2C] in W's column
order, q exact; RAW: plus `raw_bias`, the magic number left in), `x_tile_t` (x^T's
tile), `stored` (W's stored elements of a tile, as they are).
Host: `QuantArgs` / `quant_args` (a dense tensor or a QuantizedWeight -> the pointers
and constexprs a kernel takes), `unsupported` (why a weight cannot be taken, or None),
`weight_bytes`, `fast_dequant` (whether the PTX conversions apply), `on_acc` (whether
int4's scales go on the products: INT4_ON_ACC).

Dequantization: per-row kinds (int8, fp8) widen W's tile to x's dtype and scale the
float32 accumulator after the loop (exact: the scale is one per output). Grouped kinds
(int4, GGUF-style int8) take one dot per group, W dequantized in x's dtype with the
group's scale (and offset) by one FMA a weight, so nothing per group touches the
accumulator; scaling the accumulator per group instead costs 2 * 16 / G FMAs a weight
at 16 padded rows (1 at G = 32) and an x sum per group for the offset.
Why the conversions matter: a decode step reads each weight once, so its speed is the
memory's, and the conversions must keep pace: an H100 streams ~15 one-byte (~29 int4)
weights a clock per SM, while its int -> float converter (I2F) does 16 a clock, which
would bound int4 at about half the memory's speed. So on the GPU in fp16 or bf16 (FAST)
they run as inline PTX on four packed bytes at a time with full-rate integer and
half-precision ops (the "magic number" trick: a nibble or byte OR-ed into the mantissa
of 1024.0 (fp16) or 128.0 (bf16) is that float plus the integer; one packed FMA removes
it; fp8 -> bf16 by moving its bits into place and one exact multiply by 2^120): int4 1.5,
int8 -> fp16 1.25, fp8 -> bf16 2.5 instructions a weight. fp8 -> fp16 is one native packed
conversion and int8 -> bf16 the compiler's own I2F-free sequence, so those stay casts.
Compiled for sm_90 (SASS counted, 32-row panels on 2 warps), whole K loops take per
weight: int4 (G = 128) 4.3 instructions with FAST, 5.8 without; int8 (fp16) 3.0 vs 4.5;
fp8 (fp16) 2.2. FAST_DEQUANT is the A/B knob; off it (and under Triton's interpreter,
which runs no PTX, and in float32) the same values come from plain Triton casts.
INT4_HALVES (A/B knob, off): each int4 group as two dots of half its width, the low
nibbles (W's even columns) against x's even columns and the high ones against its odd
columns, so the widened tiles need no interleaving; on the H200 at one row (2026-12-03,
g128) it was faster on the 8B's gate/up (52.7 -> 45.9 us) and slower on the rest (qkv
14.0 -> 17.4, o 13.4 -> 14.3, down 33.2 -> 36.0).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import triton
import triton.language as tl

from tessera import envs
from tessera.quant.formats import QuantizedWeight

FAST_DEQUANT = True  # A/B knob: the PTX conversions on the GPU (fp16 / bf16 activations)
INT4_HALVES = False  # A/B knob: int4 groups as two half-width dots (`_int4_halves_dot`)
# A/B knob: int4 in K slices with its scales and offsets on the float32 products instead
# of each weight (kernels/quant_loops.py `slices_group_dot`, ON_ACC)
INT4_ON_ACC = False

# fp16: 1024.0 | q is 1024 + q (q < 1024); bf16: 128.0 | q is 128 + q (q < 128)
_NIBBLES_PTX = """{
.reg .b32 t0, t1, t2, t3, z, one, neg;
mov.b32 z, 0;
mov.b32 one, ONE;
mov.b32 neg, NEG;
prmt.b32 t0, $4, z, 0x4140;
prmt.b32 t1, $4, z, 0x4342;
shr.b32 t2, t0, 4;
shr.b32 t3, t1, 4;
lop3.b32 t0, t0, 0x000F000F, MAGIC, 0xEA;
lop3.b32 t1, t1, 0x000F000F, MAGIC, 0xEA;
lop3.b32 t2, t2, 0x000F000F, MAGIC, 0xEA;
lop3.b32 t3, t3, 0x000F000F, MAGIC, 0xEA;
fma.rn.TYPE $0, t0, one, neg;
fma.rn.TYPE $1, t1, one, neg;
fma.rn.TYPE $2, t2, one, neg;
fma.rn.TYPE $3, t3, one, neg;
}"""
# (prmt 0x4140 / 0x4342: bytes 0, 1 (2, 3) into the low bytes of two 16-bit halves;
# lop3 0xEA: (a & b) | c)
_NIBBLES_FP16 = tl.constexpr(_NIBBLES_PTX.replace("ONE", "0x3C003C00").replace("NEG", "0xE400E400")
                             .replace("MAGIC", "0x64006400").replace("TYPE", "f16x2"))
_NIBBLES_BF16 = tl.constexpr(_NIBBLES_PTX.replace("ONE", "0x3F803F80").replace("NEG", "0xC300C300")
                             .replace("MAGIC", "0x43004300").replace("TYPE", "bf16x2"))
# the same without the FMAs: each nibble q as RAW_BIAS + q (1024 + q fp16, 128 + q bf16)
_RAW_PTX = """{
.reg .b32 t0, t1, t2, t3, z;
mov.b32 z, 0;
prmt.b32 t0, $4, z, 0x4140;
prmt.b32 t1, $4, z, 0x4342;
shr.b32 t2, t0, 4;
shr.b32 t3, t1, 4;
lop3.b32 $0, t0, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $1, t1, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $2, t2, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $3, t3, 0x000F000F, MAGIC, 0xEA;
}"""
_RAW_FP16 = tl.constexpr(_RAW_PTX.replace("MAGIC", "0x64006400"))
_RAW_BF16 = tl.constexpr(_RAW_PTX.replace("MAGIC", "0x43004300"))

# int8 -> fp16: q ^ 0x80 is q + 128 unsigned, and 0x64 above it (1024.0 | q + 128) is
# 1024 + 128 + q; one xor for four bytes, then each pair's bytes and 0x64s put in place
# by one prmt (0x4140 / 0x4342: bytes 0, 1 (2, 3) of t, each under a byte of `magic`)
_INT8_FP16 = tl.constexpr("""{
.reg .b32 t, t0, t1, magic, one, neg;
mov.b32 magic, 0x64646464;
mov.b32 one, 0x3C003C00;
mov.b32 neg, 0xE480E480;
xor.b32 t, $2, 0x80808080;
prmt.b32 t0, t, magic, 0x4140;
prmt.b32 t1, t, magic, 0x4342;
fma.rn.f16x2 $0, t0, one, neg;
fma.rn.f16x2 $1, t1, one, neg;
}""")

# e4m3 -> bf16: sign to bit 15, exponent and mantissa (7 bits) to bits 4-10 of each half
# (prmt 0x1404 / 0x3424: bytes 0, 1 (2, 3) into the high bytes of the halves), which is
# the value times 2^-120 (subnormals included: bf16 keeps them); times 2^120 is exact
_FP8_BF16 = tl.constexpr("""{
.reg .b32 p0, p1, s0, s1, z, scale, nzero;
mov.b32 z, 0;
mov.b32 scale, 0x7B807B80;
mov.b32 nzero, 0x80008000;
prmt.b32 p0, $2, z, 0x1404;
prmt.b32 p1, $2, z, 0x3424;
shr.b32 s0, p0, 4;
shr.b32 s1, p1, 4;
and.b32 p0, p0, 0x80008000;
and.b32 p1, p1, 0x80008000;
lop3.b32 s0, s0, 0x07F007F0, p0, 0xEA;
lop3.b32 s1, s1, 0x07F007F0, p1, 0xEA;
fma.rn.bf16x2 $0, s0, scale, nzero;
fma.rn.bf16x2 $1, s1, scale, nzero;
}""")


@triton.jit
def widen(q, dt: tl.constexpr, FAST: tl.constexpr):
    """An int8 or fp8 (e4m3) tile -> dt, exactly (every int8 and e4m3 value is one of
    fp16's, bf16's and fp32's)."""
    if FAST and q.dtype == tl.int8 and dt == tl.float16:
        return tl.inline_asm_elementwise(_INT8_FP16, "=r,=r,r", [q], dtype=tl.float16,
                                         is_pure=True, pack=4)
    if FAST and q.dtype == tl.float8e4nv and dt == tl.bfloat16:
        return tl.inline_asm_elementwise(_FP8_BF16, "=r,=r,r", [q.to(tl.uint8, bitcast=True)],
                                         dtype=tl.bfloat16, is_pure=True, pack=4)
    return q.to(dt)


@triton.jit
def int4_halves(b, dt: tl.constexpr, FAST: tl.constexpr, RAW: tl.constexpr = False):
    """b [R, C] uint8 (two int4 per byte) -> (low, high) [R, C] in dt: q in [0, 15] of
    columns 2j and 2j + 1, exactly; RAW: raw_bias(dt) + q, the magic number left in (three
    instructions for two weights on the GPU, against four)."""
    if FAST and dt == tl.float16:
        return tl.inline_asm_elementwise(_RAW_FP16 if RAW else _NIBBLES_FP16, "=r,=r,=r,=r,r",
                                         [b], dtype=(tl.float16, tl.float16), is_pure=True,
                                         pack=4)
    if FAST and dt == tl.bfloat16:
        return tl.inline_asm_elementwise(_RAW_BF16 if RAW else _NIBBLES_BF16, "=r,=r,=r,=r,r",
                                         [b], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True,
                                         pack=4)
    bias = raw_bias(dt) if RAW else 0.0
    return ((b & 0xF).to(dt) + bias).to(dt), ((b >> 4).to(dt) + bias).to(dt)


@triton.jit
def raw_bias(dt: tl.constexpr):
    """What `int4_halves` adds to each nibble with RAW: 1024 in fp16, 128 in bf16, float32."""
    return 1024.0 if dt == tl.float16 else 128.0


@triton.jit
def int4_tile(b, dt: tl.constexpr, FAST: tl.constexpr):
    """b [R, C] uint8 -> q [R, 2C] in dt, in W's column order (low nibble first)."""
    lo, hi = int4_halves(b, dt, FAST)
    return tl.reshape(tl.join(lo, hi), [b.shape[0], 2 * b.shape[1]])


@triton.jit
def x_tile_t(x_ptr, ms, ks, m_ok, K, stride_xm):
    """x^T [len(ks), len(ms)]: columns ks of rows ms of x (0 past K and M)."""
    return tl.load(x_ptr + ms[None, :] * stride_xm + ks[:, None],
                   mask=(ks < K)[:, None] & m_ok[None, :], other=0.0)


@triton.jit
def stored(rows, cols, n_ok, limit, EVEN: tl.constexpr):
    """W's stored elements [R, C] at rows [R, 1] (pointers) and cols [C] (< limit)."""
    if EVEN:
        return tl.load(rows + cols[None, :])
    return tl.load(rows + cols[None, :], mask=n_ok[:, None] & (cols < limit)[None, :], other=0.0)


@triton.jit
def _group_tile(rows, s_rows, o_rows, kg, n_ok, K, dt: tl.constexpr, KIND: tl.constexpr,
                GROUP: tl.constexpr, FAST: tl.constexpr, EVEN: tl.constexpr):
    """W's columns [kg, kg + GROUP) of these rows dequantized to dt [R, GROUP]: int4
    q * scale + offset, grouped int8 q * scale (the rows' scale and offset of group
    kg / GROUP; q exact, one rounding to dt where dt is fp16; in bf16 the fp16 scale and
    offset are rounded to bf16 first, an error a group shares)."""
    if KIND == "int4":
        q = int4_tile(stored(rows, kg // 2 + tl.arange(0, GROUP // 2), n_ok, K // 2, EVEN), dt,
                      FAST)
    else:
        q = widen(stored(rows, kg + tl.arange(0, GROUP), n_ok, K, EVEN), dt, FAST)
    ok = n_ok & (tl.full(n_ok.shape, kg, tl.int32) < K)  # this group's rows
    if EVEN:
        s = tl.load(s_rows + kg // GROUP)
    else:
        s = tl.load(s_rows + kg // GROUP, mask=ok, other=0.0)
    if KIND == "int4":
        if EVEN:
            o = tl.load(o_rows + kg // GROUP)
        else:
            o = tl.load(o_rows + kg // GROUP, mask=ok, other=0.0)
        return tl.fma(q, s.to(dt)[:, None], o.to(dt)[:, None])
    return q * s.to(dt)[:, None]


@triton.jit
def _int4_halves_dot(acc, rows, s_rows, o_rows, x_even, x_odd, kg, n_ok, K, dt: tl.constexpr,
                     GROUP: tl.constexpr, FAST: tl.constexpr, EVEN: tl.constexpr,
                     PRECISION: tl.constexpr):
    """One int4 group as two dots of GROUP / 2 columns: the low nibbles (W's even columns)
    with x's even columns, the high ones with its odd columns, so the dequantized tiles
    need no interleaving (join + reshape) before the MMA."""
    lo, hi = int4_halves(stored(rows, kg // 2 + tl.arange(0, GROUP // 2), n_ok, K // 2, EVEN),
                         dt, FAST)
    ok = n_ok & (tl.full(n_ok.shape, kg, tl.int32) < K)
    if EVEN:
        s = tl.load(s_rows + kg // GROUP).to(dt)[:, None]
        o = tl.load(o_rows + kg // GROUP).to(dt)[:, None]
    else:
        s = tl.load(s_rows + kg // GROUP, mask=ok, other=0.0).to(dt)[:, None]
        o = tl.load(o_rows + kg // GROUP, mask=ok, other=0.0).to(dt)[:, None]
    acc = tl.dot(tl.fma(lo, s, o), x_even, acc, input_precision=PRECISION)
    return tl.dot(tl.fma(hi, s, o), x_odd, acc, input_precision=PRECISION)


@triton.jit
def quant_dot(acc, acc2, rows, rows2, s_rows, s_rows2, o_rows, o_rows2, x_ptr, ms, m_ok, n_ok,
              k0, K, stride_xm, KIND: tl.constexpr, GROUP: tl.constexpr, FAST: tl.constexpr,
              TWO: tl.constexpr, EVEN: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_K: tl.constexpr, HALVES: tl.constexpr = False):
    """One step of BLOCK_K columns from k0 of a quantized W, as the A operand (W in
    registers, x^T the B one): acc [R, BM] += W[rows, k0:] @ x[ms, k0:]^T, and acc2 the
    same for rows2 (TWO: two panels that share x's tile; else acc2 comes back as it came).
    Per-row scales (int8, fp8; GROUP 0): W widened to x's dtype, the scale left for after
    the loop (`row_scale`). In groups (int4, grouped int8): one dot per group of GROUP
    columns, W dequantized in x's dtype with the group's scale (and offset), so nothing
    per group is left for the accumulator. rows, rows2: [R, 1] pointers to the rows'
    stored data; s_rows, o_rows (groups): [R] pointers to the rows' scales and offsets.
    EVEN: no row past N and no column past K."""
    dt = x_ptr.dtype.element_ty
    if KIND == "int4" and HALVES:
        for g in tl.static_range(BLOCK_K // GROUP):
            kg = k0 + g * GROUP
            evens = kg + 2 * tl.arange(0, GROUP // 2)
            x_even = x_tile_t(x_ptr, ms, evens, m_ok, K, stride_xm)  # [GROUP / 2, BM]
            x_odd = x_tile_t(x_ptr, ms, evens + 1, m_ok, K, stride_xm)
            acc = _int4_halves_dot(acc, rows, s_rows, o_rows, x_even, x_odd, kg, n_ok, K, dt,
                                   GROUP, FAST, EVEN, PRECISION)
            if TWO:
                acc2 = _int4_halves_dot(acc2, rows2, s_rows2, o_rows2, x_even, x_odd, kg, n_ok,
                                        K, dt, GROUP, FAST, EVEN, PRECISION)
    elif GROUP > 0:
        for g in tl.static_range(BLOCK_K // GROUP):
            kg = k0 + g * GROUP
            xt = x_tile_t(x_ptr, ms, kg + tl.arange(0, GROUP), m_ok, K, stride_xm)
            w = _group_tile(rows, s_rows, o_rows, kg, n_ok, K, dt, KIND, GROUP, FAST, EVEN)
            acc = tl.dot(w, xt, acc, input_precision=PRECISION)
            if TWO:
                w2 = _group_tile(rows2, s_rows2, o_rows2, kg, n_ok, K, dt, KIND, GROUP, FAST,
                                 EVEN)
                acc2 = tl.dot(w2, xt, acc2, input_precision=PRECISION)
    else:
        ks = k0 + tl.arange(0, BLOCK_K)
        xt = x_tile_t(x_ptr, ms, ks, m_ok, K, stride_xm)
        acc = tl.dot(widen(stored(rows, ks, n_ok, K, EVEN), dt, FAST), xt, acc,
                     input_precision=PRECISION)
        if TWO:
            acc2 = tl.dot(widen(stored(rows2, ks, n_ok, K, EVEN), dt, FAST), xt, acc2,
                          input_precision=PRECISION)
    return acc, acc2


@triton.jit
def row_scale(acc, scale_ptr, ns, n_ok):
    """acc [R, BM] times the per-row scales (float32) of rows ns [R]."""
    return acc * tl.load(scale_ptr + ns, mask=n_ok, other=0.0)[:, None]


class QuantArgs(NamedTuple):
    """What a kernel takes for its weight: data (the tensor it reads), scale and offset
    (the data tensor where the format has none), KIND ("" dense, "int8", "fp8",
    "int4"), GROUP (the group size; 0: one scale per row), rows and k (W is [rows, k])."""
    data: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    KIND: str
    GROUP: int
    rows: int
    k: int


DATA_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "int4": torch.uint8}


def unsupported(qw: QuantizedWeight) -> Optional[str]:
    """Why the kernels cannot take this weight (None: they can). They take int8 and fp8
    with float32 scales per row, and groups (int4; int8, e.g. GGUF Q8_0) of a power of two
    from 16 columns, which divides K, with float scales (and int4's offsets) [N, K / G]."""
    kind, g = qw.kind, qw.group_size
    if kind not in DATA_DTYPES:
        return f"unknown quantized weight kind {kind!r}"
    n, k = qw.out_features, qw.in_features
    if qw.data.dtype != DATA_DTYPES[kind] or qw.data.dim() != 2:
        return f"{kind} data must be {DATA_DTYPES[kind]} [N, K], got {qw.data.dtype}"
    if kind == "int4" and not g:
        return "int4 needs a group size"
    if kind == "fp8" and g:
        return "fp8 weights take one scale per row"
    if g and (g < 16 or g & (g - 1) or k % g):
        return f"groups of {g} columns (K = {k}): the kernels take powers of two >= 16"
    shape = (n, k // g) if g else (n,)
    parts = [("scales", qw.scale)] + ([("offsets", qw.offset)] if kind == "int4" else [])
    for name, t in parts:
        if t is None or tuple(t.shape) != shape or not t.dtype.is_floating_point:
            return (f"{kind} {name} must be float {shape}, got "
                    f"{None if t is None else (t.dtype, tuple(t.shape))}")
    if not g and qw.scale.dtype != torch.float32:
        return f"per-row scales must be float32, got {qw.scale.dtype}"
    return None


def quant_args(weight: Union[torch.Tensor, QuantizedWeight]) -> QuantArgs:
    """A dense [N, K] weight or a QuantizedWeight -> QuantArgs (contiguous tensors);
    ValueError for a weight the kernels cannot take (`unsupported`)."""
    if isinstance(weight, torch.Tensor):
        w = weight.contiguous()
        return QuantArgs(w, w, w, "", 0, w.shape[0], w.shape[1])
    why = unsupported(weight)
    if why:
        raise ValueError(f"quantized GEMM: {why}")
    data, scale = weight.data.contiguous(), weight.scale.contiguous()
    offset = weight.offset.contiguous() if weight.offset is not None else scale
    return QuantArgs(data, scale, offset, weight.kind, weight.group_size,
                     weight.out_features, weight.in_features)


def weight_bytes(weight: Union[torch.Tensor, QuantizedWeight]) -> int:
    """Bytes a product reads for this weight (data, scales, offsets)."""
    parts = [weight] if isinstance(weight, torch.Tensor) else [
        t for t in (weight.data, weight.scale, weight.offset) if t is not None]
    return sum(t.numel() * t.element_size() for t in parts)


def on_acc(x: torch.Tensor, qa: QuantArgs) -> bool:
    """int4's scales go on the float32 products in sliced steps (INT4_ON_ACC): a bf16 x
    (the sums of 128 + q cancel: ~bias / 8 ulps of float32 a group, far under bf16's
    rounding of the output; fp16's bias is 1024), and a float32 one under the interpreter,
    whose bf16 loads come out wrong, so the CPU tests check it there."""
    return (INT4_ON_ACC and qa.KIND == "int4" and (x.dtype == torch.bfloat16 or (
        x.dtype == torch.float32 and envs.triton_interpreted())))


def fast_dequant(x: torch.Tensor) -> bool:
    """The PTX conversions apply: FAST_DEQUANT, CUDA (not interpreted), fp16 or bf16."""
    return (FAST_DEQUANT and x.is_cuda and not envs.triton_interpreted()
            and x.dtype in (torch.float16, torch.bfloat16))
