"""Skinny GEMM for decode steps of a few rows, Triton: y = x @ W^T (+ bias), W read once.

Objects: `skinny_gemm` (the launcher), `skinny_gemm_ref` (PyTorch), `skinny_qkv_rope`
(q/k/v with rotary and the cache write), `skinny_gemm_add_norm` (o/down with the residual
add and the next norm's first half); the tiles come from kernels/skinny_config.py
(`pick_config`, `SkinnyConfig`).
Shapes: x [M, K] (M <= MAX_ROWS) and W [N, K] (nn.Linear's layout) -> y [M, N].
With `gated=True`, W is a stacked [gate | up] of 2I rows and the result is
silu(x @ gate^T) * (x @ up^T) [M, I]: each program owns the same rows of both halves, so
the gated MLP's activation is applied in the epilogue and no SiLU-and-mul kernel runs.
Roundings follow the unfused PyTorch ops (each projection rounded to the dtype, silu
rounded before the multiply), so only the GEMM's summation order differs.
`skinny_qkv_rope` is the stacked q/k/v projection of decode tokens with rotary embedding
and the KV-cache write in its epilogue (kernels/rotary_kv_write.py: `rope_epilogue`):
each program owns dims of one head's first half and their partners in the second half.
The RMSNorm between two projections needs no kernel of its own (kernels/norm_epilogue.py):
`skinny_gemm_add_norm` adds its product to the residual and leaves the norm pending
(a PendingNorm); `skinny_gemm` and `skinny_qkv_rope` finish it, given its parts.
W may be a QuantizedWeight (quant/formats.py: int8, fp8, int4, grouped int8) in every
mode: kernels/quant_loops.py's `quant_loop` widens or dequantizes its tiles in registers
and applies per-row scales to the float32 accumulator after the loop, before the pending
norm's 1/rms, the bias and the epilogue; `quant_config` (QUANT_CONFIG_OVERRIDES, the A/B
knob) picks its tiles. The dense kernel's compiled code is unchanged (constexpr branches).
Two modes make x over in each program first (kernels/skinny_a8.py; A/B knobs, off: they
lost to plain widening on the H200): FP8_ACTIVATIONS (an fp8 W times x quantized to fp8,
the fp8 MMA: `uses_a8`, skinny_config.a8_config) and FP16_X (an int8 / fp8 W widened to
fp16 times x made fp16 exactly, times a power of two: `x_prep`).

The work is split along N: each program owns BLOCK_N rows of W and walks K in BLOCK_K
steps, `tl.dot`(W tile [BLOCK_N, BLOCK_K], x^T tile [BLOCK_K, BLOCK_M]) with the
rows of x padded to BLOCK_M (`block_rows`: 16 for a dense W, 8 for a quantized one). A
step of a few rows is bound by reading W, so the product's waste is nearly free and the
loads are what is tuned (`pick_config`, from benchmarks/kernels/
skinny_gemm_sweep.py on an H100: 6-10% faster than cuBLAS on the Llama-3-8B shapes).
A config may also split K among split_k programs (kernels/split_k.py: the last of them
adds the partial sums and runs the epilogue), as quantized weights' configs do where a
product has few panels, and, for a quantized W, slice each step's columns among the
program's warps (SkinnyConfig.slices: a batched dot, each warp its slice of K over all
the panel's rows, summed after the loop), so a panel keeps more warps busy.
Under PDL (kernels/pdl.py) the first W tile is loaded (an int8 / fp8 W's stored bytes too:
QUANT_PRELOAD, the loop's first step peeled), and the leading columns of every row
(kernels/l2_prefetch.py) asked of L2, before waiting for the kernel that produces x; it
lets the next kernel launch TRIGGER_STEPS steps before its loop ends, so that kernel's
own prefetch overlaps this one's tail. Loading x through a
fused SiLU or RMSNorm inside the loop was measured too: it halved the speed, so those
stay out of the loop (a pending norm's x is loaded as it is stored; its scale applies
to the accumulator after the loop).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl
from tessera.kernels.pdl import pdl_launch_args
from tessera.kernels.l2_prefetch import line_columns, prefetch_columns, prefetch_l2
from tessera.kernels.norm_epilogue import (PendingNorm, add_pending_norm, checked_parts,
                                           inverse_rms, load_parts)
from tessera.kernels.quant_tiles import QuantArgs, fast_dequant, quant_args, row_scale
from tessera.kernels.rotary_kv_write import cache_store_options, rope_epilogue
from tessera.kernels.silu_and_mul import silu_mul
from tessera.kernels.hardware import multiprocessors
from tessera.kernels.skinny_config import (MAX_ROWS, SkinnyConfig, a8_config, fit_one_wave,
                                           launch_warps, pick_config, slices_fit)
from tessera.kernels import quant_loops, quant_tiles, skinny_a8, split_k
from tessera.quant.formats import QuantizedWeight, quant_linear_ref

# Under PDL, K steps before the end of its loop at which a GEMM lets the next kernel launch
# (A/B knob). On H100s, batch 1 (norms in the projections): 0 (after the loop) 178.3 tok/s,
# 1: 178.9, 2: 179.0-179.8, 3: 179.0, 4: 178.9
TRIGGER_STEPS = 2
# A/B knob: under PDL, a per-row quantized W's (int8, fp8) first step loaded before the
# wait, as a dense W's is (its dequantization waits for x's dtype only, not for x)
QUANT_PRELOAD = False  # off until measured on the GPU
# A/B knobs, off (slower): x made over in each program before the loop (skinny_a8.py):
# FP8_ACTIVATIONS (fp8 x, the fp8 MMA), FP16_X (x fp16 times a power of two, W widened to
# fp16). Fewer instructions in the loop, but the prep costs more: H200, Llama-3-8B batch 1
# (2026-12-05): fp8 305.8-313.0 tok/s widened, 282.2 / 268.7 with them; int8 321 -> 259.7
FP8_ACTIVATIONS = False
A8_MAX_ROWS = 4
FP16_X = False
X16_MAX_ROWS = 4
# A/B knobs: x's rows padded for the MMA to a power of two >= MIN_BLOCK_M (a dense W) or
# QUANT_MIN_BLOCK_M (a quantized one). 8, the MMA's narrowest: H200, Llama-3-8B batch 1
# (2026-12-05), 16 -> 8: int4 219.1 -> 238.2 tok/s, fp8 305.8 -> 312.2, int8 321.0 ->
# 320.6, the 70B's int8 49.5 -> 50.5; bf16 232.9 -> 224.9 (so a dense W stays at 16)
MIN_BLOCK_M = 16
QUANT_MIN_BLOCK_M = 8


@triton.jit
def _tile(w_rows, ks, n_ok, K, EVEN: tl.constexpr):
    if EVEN:
        return tl.load(w_rows + ks[None, :])
    return tl.load(w_rows + ks[None, :], mask=n_ok[:, None] & (ks < K)[None, :], other=0.0)


@triton.jit
def _x_tile(x_ptr, ms, ks, m_ok, K, stride_xm):
    return tl.load(x_ptr + ms[None, :] * stride_xm + ks[:, None],
                   mask=(ks < K)[:, None] & m_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]


@triton.jit
def _skinny_gemm(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
                 pos_ptr, cs_ptr, slot_ptr, kv_ptr, stride_kvs,
                 part_ptr, num_parts, eps, res_ptr, g_ptr, scaled_ptr, scale_ptr, offset_ptr,
                 work_ptr, count_ptr, xq_ptr, K_PER, KIND: tl.constexpr, GROUP: tl.constexpr,
                 FAST: tl.constexpr,
                 HAS_BIAS: tl.constexpr, GATED: tl.constexpr, ROPE: tl.constexpr,
                 NORM_IN: tl.constexpr, NORM_OUT: tl.constexpr, PART_BLOCK: tl.constexpr,
                 NUM_Q: tl.constexpr, NUM_KV: tl.constexpr, HALF: tl.constexpr,
                 FP8_CACHE: tl.constexpr, PRE_ROUND: tl.constexpr, EVEN: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, PREFETCH_K: tl.constexpr, LINE: tl.constexpr,
                 TRIGGER_STEPS: tl.constexpr, USE_PDL: tl.constexpr, SPLIT: tl.constexpr,
                 HALVES: tl.constexpr, PRELOAD: tl.constexpr, A8: tl.constexpr,
                 X16: tl.constexpr, XQ_ROWS: tl.constexpr, PREP_K: tl.constexpr,
                 XQ_ONE_PASS: tl.constexpr, SLICES: tl.constexpr, ON_ACC: tl.constexpr):
    # N: rows of the output (I when gated; W then has 2I rows, up at row offset N; in rope
    # mode the heads, NUM_Q + 2 NUM_KV of 2 HALF rows, place the programs instead). Along
    # axis 1, SPLIT programs take K_PER columns each (kernels/split_k.py).
    tl.static_assert(not (NORM_OUT and (GATED or ROPE)), "NORM_OUT is for plain products")
    pid = tl.program_id(0)
    k_lo = tl.program_id(1) * K_PER
    k_hi = tl.minimum(k_lo + K_PER, K)
    head = 0
    if ROPE:  # BLOCK_N dims of one head's first half; their partners are HALF rows down
        chunks = (HALF + BLOCK_N - 1) // BLOCK_N
        head = pid // chunks
        dim = (pid % chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = dim < HALF
        ns = head * 2 * HALF + dim
        ns2 = ns + HALF
    else:
        dim = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        ns = dim
        n_ok = ns < N
        ns2 = ns + N  # gated: the up half, N rows down
    ms = tl.arange(0, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    m_ok = ms < M
    KW = K  # W's row length in its elements (int4: bytes, two columns each)
    if KIND == "int4":
        KW = K // 2
    w_rows = w_ptr + ns.to(tl.int64)[:, None] * KW  # [BLOCK_N, 1] row starts
    rows2 = w_ptr + ns2.to(tl.int64)[:, None] * KW
    if KIND == "":  # weights: no kernel writes them, so before the wait
        w = _tile(w_rows, k_lo + ks, n_ok, K, EVEN)
    elif PRELOAD:  # the same for a per-row quantized W's stored bytes
        wq = quant_tiles.stored(w_rows, k_lo + ks, n_ok, K, EVEN)
        wq2 = wq
        if GATED or ROPE:
            wq2 = quant_tiles.stored(rows2, k_lo + ks, n_ok, K, EVEN)
    if USE_PDL and PREFETCH_K > 0:
        prefetch_l2(w_ptr, w_rows, n_ok, KW, PREFETCH_K, LINE)
        if GATED or ROPE:  # two panels of W per program
            prefetch_l2(w_ptr, rows2, n_ok, KW, PREFETCH_K, LINE)
    pdl.wait(USE_PDL)
    ok = n_ok[:, None] & m_ok[None, :]
    if NORM_IN:  # x is a pending norm's g * s: its partial sums give each row's 1/rms
        parts = load_parts(part_ptr, ms, num_parts, PART_BLOCK)
    if NORM_OUT:  # the residual this output is added to, and the next norm's weight
        res = tl.load(res_ptr + ms[None, :] * stride_ym + ns[:, None], mask=ok, other=0.0)
        g = tl.load(g_ptr + ns, mask=n_ok, other=0.0)
    trigger_k = k_lo + (tl.cdiv(k_hi - k_lo, BLOCK_K) - TRIGGER_STEPS) * BLOCK_K
    if KIND == "":
        xt = _x_tile(x_ptr, ms, k_lo + ks, m_ok, K, stride_xm)
        acc = tl.dot(w, xt, input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        acc2 = acc
        if GATED or ROPE:
            acc2 = tl.dot(_tile(rows2, k_lo + ks, n_ok, K, EVEN), xt, input_precision=PRECISION)
        for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
            if TRIGGER_STEPS > 0:  # let the next kernel launch this many steps before the end
                if k0 == trigger_k:
                    pdl.launch_dependents(USE_PDL)
            kk = k0 + ks
            xt = _x_tile(x_ptr, ms, kk, m_ok, K, stride_xm)
            acc = tl.dot(_tile(w_rows, kk, n_ok, K, EVEN), xt, acc, input_precision=PRECISION)
            if GATED or ROPE:
                acc2 = tl.dot(_tile(rows2, kk, n_ok, K, EVEN), xt, acc2,
                              input_precision=PRECISION)
    elif A8:  # an fp8 W times x quantized to fp8 here (kernels/skinny_a8.py)
        sx = skinny_a8.quantize_x(x_ptr, xq_ptr, M, K, k_lo, k_hi, stride_xm, ms, XQ_ROWS,
                                  PREP_K, XQ_ONE_PASS)  # [BLOCK_M]
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        acc, acc2 = skinny_a8.a8_loop(acc, acc, w_rows, rows2, xq_ptr, ms, m_ok, n_ok, K, k_lo,
                                      k_hi, trigger_k, GATED or ROPE, EVEN, BLOCK_K,
                                      TRIGGER_STEPS, USE_PDL)
        acc = row_scale(acc, scale_ptr, ns, n_ok) * sx[None, :]
        if GATED or ROPE:
            acc2 = row_scale(acc2, scale_ptr, ns2, n_ok) * sx[None, :]
    else:  # quantized W, widened in registers (kernels/quant_loops.py)
        xs, stride_xs = x_ptr, stride_xm  # the x the loop reads
        if X16:  # bf16 x as fp16 times a power of two, so W widens to fp16 (skinny_a8.py)
            sx = skinny_a8.quantize_x(x_ptr, xq_ptr, M, K, k_lo, k_hi, stride_xm, ms, XQ_ROWS,
                                      PREP_K, XQ_ONE_PASS)  # [BLOCK_M]
            xs, stride_xs = xq_ptr, K
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        acc2 = acc
        k_loop = k_lo
        if PRELOAD:  # the first step, from the bytes loaded before the wait
            dt = xs.dtype.element_ty
            xt = _x_tile(xs, ms, k_lo + ks, m_ok, K, stride_xs)
            acc = tl.dot(quant_tiles.widen(wq, dt, FAST), xt, input_precision=PRECISION)
            if GATED or ROPE:
                acc2 = tl.dot(quant_tiles.widen(wq2, dt, FAST), xt, input_precision=PRECISION)
            k_loop = k_lo + BLOCK_K
        acc, acc2 = quant_loops.quant_loop(acc, acc2, w_rows, rows2, scale_ptr, offset_ptr, ns,
                                           ns2, n_ok, xs, ms, m_ok, K, k_loop, k_hi, stride_xs,
                                           trigger_k, KIND, GROUP, FAST, GATED or ROPE, EVEN,
                                           PRECISION, BLOCK_N, BLOCK_M, BLOCK_K, TRIGGER_STEPS,
                                           USE_PDL, HALVES, SLICES, ON_ACC)
        if X16:
            acc = acc * sx[None, :]
            acc2 = acc2 * sx[None, :]
    pdl.launch_dependents(USE_PDL)  # for a K too short to reach trigger_k (else a no-op);
    # at the start of the kernel it was slower (171.4 vs 173.9 tok/s)
    if SPLIT > 1:  # the last program along K adds the partials and runs the epilogue
        acc, acc2, last = split_k.reduce_partials(acc, acc2, work_ptr, count_ptr, pid,
                                                  tl.program_id(1), GATED or ROPE, SPLIT,
                                                  BLOCK_N, BLOCK_M)
    else:
        last = True
    if last:
        dt = y_ptr.dtype.element_ty
        if NORM_IN:
            r = inverse_rms(parts, K, eps)[None, :]
            acc = acc * r
            if GATED or ROPE:
                acc2 = acc2 * r
        if HAS_BIAS:
            acc += tl.load(b_ptr + ns, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            if ROPE:
                acc2 += tl.load(b_ptr + ns2, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        out = acc.to(dt)
        if ROPE:
            rope_epilogue(out, acc2.to(dt), head, dim, ok, ms, m_ok, y_ptr, stride_ym, pos_ptr,
                          cs_ptr, slot_ptr, kv_ptr, stride_kvs, NUM_Q, NUM_KV, HALF, FP8_CACHE,
                          PRE_ROUND)
        elif NORM_OUT:
            add_pending_norm(out, res, g, ns, ms, ok, y_ptr, stride_ym, scaled_ptr, part_ptr, pid,
                             BLOCK_M)
        else:
            if GATED:  # silu(gate) * up, each rounded as the unfused ops round
                out = silu_mul(out, acc2.to(dt))
            tl.store(y_ptr + ms[None, :] * stride_ym + ns[:, None], out, mask=ok)


Weight = Union[torch.Tensor, QuantizedWeight]  # dense [N, K] or quantized (quant/formats.py)


def _fit(cfg: SkinnyConfig, qa: QuantArgs) -> SkinnyConfig:
    """Steps in groups are whole groups: block_k rounded to a multiple of the group."""
    if not qa.GROUP:
        return cfg
    return cfg._replace(block_k=max(qa.GROUP, cfg.block_k // qa.GROUP * qa.GROUP))


def uses_a8(x: torch.Tensor, qa: QuantArgs) -> bool:
    """The product takes fp8 activations (kernels/skinny_a8.py): FP8_ACTIVATIONS, an fp8
    W, at most A8_MAX_ROWS rows, and a GPU with the fp8 MMA (or the interpreter)."""
    return (FP8_ACTIVATIONS and qa.KIND == "fp8" and x.shape[0] <= A8_MAX_ROWS
            and skinny_a8.a8_capable(x))


def x_prep(x: torch.Tensor, qa: QuantArgs) -> str:
    """What each program makes of x before its loop: "fp8" (`uses_a8`), "fp16" (FP16_X:
    an int8 / fp8 W with per-row scales, a bf16 x of at most X16_MAX_ROWS rows) or ""."""
    if uses_a8(x, qa):
        return "fp8"
    if (FP16_X and qa.KIND in ("int8", "fp8") and not qa.GROUP and x.dtype == torch.bfloat16
            and x.shape[0] <= X16_MAX_ROWS):
        return "fp16"
    return ""


def block_rows(rows: int, quantized: bool = False) -> int:
    """x's rows padded for the MMA: a power of two in [MIN_BLOCK_M (QUANT_MIN_BLOCK_M for a
    quantized W), MAX_ROWS]."""
    least = QUANT_MIN_BLOCK_M if quantized else MIN_BLOCK_M
    return min(MAX_ROWS, max(least, triton.next_power_of_2(rows)))


def launch_config(config, qa: QuantArgs, n: int, gated: bool, x: torch.Tensor,
                  fit: bool = True) -> SkinnyConfig:
    """The tiles a launch takes: config (steps in whole groups), else pick_config's
    (a8_config's), a quantized W's stages fitted to one wave of its grid if fit (a plain
    or gated grid: `fit_one_wave`)."""
    if config is not None:
        return _fit(config, qa)
    if uses_a8(x, qa):
        return a8_config(n, qa.k, gated)
    cfg = _fit(pick_config(n, qa.k, gated, x.element_size(), qa.KIND, qa.GROUP), qa)
    if qa.KIND and fit:
        cfg = fit_one_wave(cfg, qa.KIND, n, qa.k, gated, x.element_size(),
                           block_rows(x.shape[0], True), multiprocessors(x.device))
    return cfg


def skinny_gemm(x: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor] = None,
                gated: bool = False, config: Optional[SkinnyConfig] = None,
                norm_parts: Optional[torch.Tensor] = None, eps: float = 0.0,
                pdl: bool = True) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias) -> [M, N]; gated: silu(gate) * up -> [M, N/2].
    weight: dense, or a QuantizedWeight dequantized in registers. With norm_parts, x is a
    PendingNorm's `scaled` (g * s) and these its `parts`: the product is of RMSNorm(s)
    (eps its epsilon), as if the norm had run first."""
    rows, k = x.shape
    qa = quant_args(weight)
    n = qa.rows // 2 if gated else qa.rows
    _check(x, qa, rows, k)
    if gated and (qa.rows % 2 or bias is not None):
        raise ValueError("gated needs an even number of weight rows and no bias")
    if n == 0 or k == 0:  # nothing to read: the PyTorch ops give the right empty/zero/bias
        if norm_parts is not None:
            raise ValueError("a pending norm needs a weight with rows and columns")
        return skinny_gemm_ref(x, weight, bias, gated)
    x = x.contiguous()
    bias = bias.contiguous() if bias is not None else None
    cfg = launch_config(config, qa, n, gated, x)
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    _launch(x, qa, bias, y, n, cfg, dict(GATED=gated),
            EVEN=n % cfg.block_n == 0 and k % cfg.block_k == 0, pdl=pdl,
            **_norm_in(norm_parts, eps))
    return y


def skinny_gemm_add_norm(x: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor],
                         residual: torch.Tensor, norm_weight: torch.Tensor,
                         config: Optional[SkinnyConfig] = None, pdl: bool = True
                         ) -> PendingNorm:
    """s = residual + x [M, K] @ weight [N, K]^T (+ bias), and the RMSNorm (weight
    norm_weight [N]) that follows it left pending for the next projection
    (kernels/norm_epilogue.py): PendingNorm(g * s, partial sums of s^2, s)."""
    rows, k = x.shape
    qa = quant_args(weight)
    n = qa.rows
    _check(x, qa, rows, k)
    if n == 0 or k == 0:
        raise ValueError(f"skinny_gemm_add_norm needs a weight with rows and columns, got "
                         f"{(n, qa.k)}")
    for name, t, shape in (("residual", residual, (rows, n)), ("norm weight", norm_weight, (n,))):
        if t.shape != shape or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"skinny_gemm_add_norm: the {name} must be {x.dtype} {shape} on "
                             f"{x.device} (x {tuple(x.shape)} @ weight {(n, qa.k)}^T), "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    x, residual = x.contiguous(), residual.contiguous()
    bias = bias.contiguous() if bias is not None else None
    cfg = launch_config(config, qa, n, False, x)
    programs = triton.cdiv(n, cfg.block_n)
    pending = PendingNorm(scaled=torch.empty(rows, n, dtype=x.dtype, device=x.device),
                          parts=torch.empty(programs, MAX_ROWS, dtype=torch.float32,
                                            device=x.device),
                          residual=torch.empty(rows, n, dtype=x.dtype, device=x.device))
    _launch(x, qa, bias, pending.residual, n, cfg, dict(NORM_OUT=True),
            EVEN=n % cfg.block_n == 0 and k % cfg.block_k == 0, grid=programs,
            parts=pending.parts, residual=residual, norm_weight=norm_weight.contiguous(),
            scaled=pending.scaled, pdl=pdl)
    return pending


def _check(x: torch.Tensor, qa: QuantArgs, rows: int, k: int) -> None:
    if rows > MAX_ROWS:
        raise ValueError(f"skinny_gemm takes at most {MAX_ROWS} rows, got {rows}")
    if qa.k != k:
        raise ValueError(f"x has {k} columns but the weight is {(qa.rows, qa.k)}")


def _norm_in(parts: Optional[torch.Tensor], eps: float) -> dict:
    """_launch's keywords for a pending norm's parts [P, MAX_ROWS] (none: {})."""
    parts = checked_parts(parts)
    if parts is None:
        return {}
    return dict(parts=parts, num_parts=parts.shape[0], eps=eps, NORM_IN=True,
                PART_BLOCK=triton.next_power_of_2(parts.shape[0]))


_PLAIN = dict(GATED=False, ROPE=False, NUM_Q=0, NUM_KV=0, HALF=0, FP8_CACHE=False,
              PRE_ROUND=False, NORM_OUT=False)  # the kernel's mode constexprs, rope's unused


def _launch(x, qa: QuantArgs, bias, y, n, cfg, mode: dict, EVEN: bool,
            grid: Optional[int] = None, rope_args: tuple = (), stride_kvs: int = 0, parts=None,
            num_parts: int = 0, eps: float = 0.0, residual=None, norm_weight=None, scaled=None,
            NORM_IN: bool = False, PART_BLOCK: int = 1, pdl: bool = True, **options):
    """mode: the constexprs that differ from _PLAIN. A pending norm
    (kernels/norm_epilogue.py) to finish: parts, num_parts, eps (NORM_IN); to leave:
    parts, residual, norm_weight, scaled (NORM_OUT). Unused pointers get the weight's."""
    rows, k = x.shape
    weight = qa.data  # what the kernel reads: W itself, or its quantized data
    pos, cs, slots, kv = rope_args or (weight,) * 4  # unused pointers outside rope mode
    parts, res, g, scaled = (weight if t is None else t
                             for t in (parts, residual, norm_weight, scaled))
    panels = grid or triton.cdiv(n, cfg.block_n)
    k_per = split_k.k_per_split(k, cfg.block_k, cfg.split_k)
    split = split_k.splits(k, k_per)
    work, count = weight, weight  # unused without a split
    if split > 1:
        work = split_k.workspace(panels, split, cfg.block_n, x.device)
        count = split_k.counters(x.device)
    prep = x_prep(x, qa)
    xq = (torch.empty(rows, k, dtype=skinny_a8.PREP_DTYPES[prep], device=x.device) if prep
          else weight)
    halves = quant_tiles.INT4_HALVES and qa.KIND == "int4"  # two dots a group, unsliced
    slices = cfg.slices if qa.KIND and prep != "fp8" and not halves else 1
    if slices > 1 and not slices_fit(cfg.block_k, slices, qa.GROUP):
        raise ValueError(f"{slices} K slices of a {cfg.block_k}-column step: each needs "
                         + (f"one group of {qa.GROUP}" if qa.GROUP else
                            "a multiple of 16 columns"))
    _skinny_gemm[(panels, split)](
        x, weight, bias if bias is not None else weight, y, rows, n, k, x.stride(0), y.stride(0),
        pos, cs, slots, kv, stride_kvs, parts, num_parts, eps, res, g, scaled, qa.scale,
        qa.offset, work, count, xq, k_per, KIND=qa.KIND, GROUP=qa.GROUP,
        FAST=fast_dequant(x) and bool(qa.KIND),
        HAS_BIAS=bias is not None, **{**_PLAIN, **mode}, NORM_IN=NORM_IN,
        PART_BLOCK=PART_BLOCK, EVEN=EVEN,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # fp32 stays fp32
        BLOCK_M=block_rows(rows, bool(qa.KIND)), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        PREFETCH_K=prefetch_columns(weight), LINE=line_columns(weight),
        TRIGGER_STEPS=TRIGGER_STEPS, SPLIT=split, HALVES=quant_tiles.INT4_HALVES,
        PRELOAD=QUANT_PRELOAD and qa.GROUP == 0 and qa.KIND != "" and prep != "fp8",
        A8=prep == "fp8", X16=prep == "fp16",
        **skinny_a8.prep_constants(rows, k_per, bool(prep)),
        SLICES=slices, ON_ACC=slices > 1 and quant_tiles.on_acc(x, qa),
        num_warps=launch_warps(cfg, slices),
        num_stages=cfg.num_stages, **options,
        **pdl_launch_args(x.device, pdl))


def skinny_qkv_rope(x: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor],
                    positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, num_heads: int, num_kv_heads: int,
                    norm_parts: Optional[torch.Tensor] = None, eps: float = 0.0,
                    pdl: bool = True) -> torch.Tensor:
    """The q/k/v projection of a few tokens with rotary embedding and the KV-cache write
    in its epilogue (what `skinny_gemm` then `rotary_kv_write` do, in one launch).
    x [M, K]; weight [(Hq + 2 Hkv) D, K] (q, k, v heads stacked; dense or quantized);
    positions, slot_mapping [M]; cos_sin [max_pos, D]; kv_cache [2, blocks, block_size,
    Hkv, D] -> q [M, Hq, D]. Each program owns BLOCK_N dims of one head's first half and
    the matching dims of its second half (two W panels, as gated mode owns gate and up
    rows), so it can rotate. norm_parts, eps: x is a pending norm's g * s, as in
    `skinny_gemm`."""
    rows, k = x.shape
    head_dim = cos_sin.shape[1]
    qa = quant_args(weight)
    n = qa.rows
    if (rows > MAX_ROWS or qa.k != k or head_dim % 2
            or n != (num_heads + 2 * num_kv_heads) * head_dim):
        raise ValueError(f"skinny_qkv_rope: x {tuple(x.shape)} and weight "
                         f"{(n, qa.k)} do not fit {num_heads} + 2 x {num_kv_heads} "
                         f"heads of {head_dim} (even; at most {MAX_ROWS} rows)")
    if positions.shape != (rows,) or slot_mapping.shape != (rows,):
        raise ValueError(f"skinny_qkv_rope: {rows} rows need as many positions and slots, "
                         f"got {tuple(positions.shape)} and {tuple(slot_mapping.shape)}")
    assert kv_cache.is_contiguous() and kv_cache.shape[-2:] == (num_kv_heads, head_dim)
    x = x.contiguous()
    bias = bias.contiguous() if bias is not None else None
    half = head_dim // 2
    plain = launch_config(None, qa, n, False, x, fit=False)  # its grid: heads x chunks
    # a head's two halves make two panels of half the plain rows (fp8 activations: 64 rows
    # a panel, the fp8 MMA's)
    rows_a_panel = plain.block_n if uses_a8(x, qa) else plain.block_n // 2
    cfg = plain._replace(block_n=max(16, min(rows_a_panel, triton.next_power_of_2(half))))
    if qa.KIND:  # a warp per 16-row MMA tile: no warp widens another's weights
        cfg = cfg._replace(num_warps=min(cfg.num_warps, cfg.block_n // 16))
    chunks = triton.cdiv(half, cfg.block_n)
    q = torch.empty(rows, num_heads, head_dim, dtype=x.dtype, device=x.device)
    mode = dict(ROPE=True, NUM_Q=num_heads, NUM_KV=num_kv_heads, HALF=half,
                **cache_store_options(kv_cache))
    _launch(x, qa, bias, q.view(rows, -1), n, cfg, mode,
            EVEN=half % cfg.block_n == 0 and k % cfg.block_k == 0,
            grid=(num_heads + 2 * num_kv_heads) * chunks,
            rope_args=(positions, cos_sin, slot_mapping, kv_cache), stride_kvs=kv_cache.stride(0),
            enable_fp_fusion=False,  # the rotation rounds each product, as PyTorch does
            pdl=pdl, **_norm_in(norm_parts, eps))
    return q


def skinny_gemm_ref(x: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor] = None,
                    gated: bool = False) -> torch.Tensor:
    """The unfused PyTorch ops, in the same roundings (a quantized W: `quant_linear_ref`,
    the float32 product of the dequantized W rounded once)."""
    if isinstance(weight, QuantizedWeight):
        y = quant_linear_ref(x, weight, bias)
    else:
        y = torch.nn.functional.linear(x, weight, bias)
    if not gated:
        return y
    gate, up = y.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
