"""The int4 decode GEMV in CUDA: the skinny GEMM's int4 products at up to 8 rows (and,
behind the ENABLED_KINDS knob, int8 and fp8 ones).

Objects: ENABLED (A/B knob), CONFIG_OVERRIDES (A/B knob: (n, k, gated) -> Int4Config),
PERSISTENT (A/B knob: blocks that take several tiles) and PERSISTENT_GRID (tests),
`Int4Config` (tiles of 16 rows a block, warps splitting K, steps of W kept in flight),
`pick_config`, `why_not(x, weight, gated)` (None where the kernel takes the product, else
the reason), `int4_gemv` (y = x @ W^T (+ bias); gated: silu(gate) * up; with norm_parts:
of RMSNorm(s) as the Triton skinny GEMM finishes a pending norm), `int4_gemv_add_norm`
(the residual add that leaves the next norm pending: a PendingNorm), `rope_why_not` and
`int4_gemv_qkv_rope` (q/k/v with rotary and the KV-cache write: skinny_qkv_rope's).
The kernel is kernels/int4_gemv_source.py's, compiled per variant by NVRTC
(kernels/nvrtc.py) on first use and launched on the current stream (with PDL on Hopper).
It computes what kernels/skinny_gemm.py computes for the same QuantizedWeight, rounding
alike, so its references are that module's (skinny_gemm_ref; rotary_kv_write_ref and
pending_norm_ref for the epilogues: tests/kernels/test_int4_gemv.py); quant/quantized.py
routes a product here where `why_not` is None, else to Triton.
"""
from __future__ import annotations

import ctypes
from typing import NamedTuple, Optional

import torch

from tessera import envs
from tessera.kernels import nvrtc
from tessera.kernels.hardware import multiprocessors
from tessera.kernels.int4_gemv_options import SCALE_KINDS, defines, step_columns
from tessera.kernels.int4_gemv_source import SOURCE
from tessera.kernels.norm_epilogue import PendingNorm, checked_parts
from tessera.kernels.pdl import pdl_active
from tessera.kernels.skinny_config import MAX_ROWS
from tessera.quant.formats import QuantizedWeight

ENABLED = True  # A/B knob: products of up to MAX_X_ROWS rows here, else Triton's
# A/B knob: the formats taken. int8 and fp8 (per output row: a byte a weight widened
# exactly, the scale on the float32 sums) pass their GPU tests but are off: on the H100
# (2026-12-05) int8 gained on o (11.6 -> 8.3 us) and lost on gate/up (43.4 -> 47.5); the
# 8B at batch 1 with every product here: int8 277.8 -> 274.1 tok/s; with all but gate/up:
# int8 278.0 -> 271.5, fp8 277.6 -> 248.6
ENABLED_KINDS = {"int4"}
MAX_X_ROWS = 8  # the MMA's n
# A/B knob: persistent blocks (as many as the SMs hold at the config's min_blocks, each
# taking every grid-th tile and loading the next tile's first steps while it finishes one)
# where the config's steps a warp fill its slots evenly; else a block a tile. Off: the 8B
# int4 at batch 1 on an H100 (2026-12-06, quant_ab.py, two repeats) 428.4 -> 374.2 tok/s
PERSISTENT = False
PERSISTENT_GRID = 0  # tests: at most this many persistent blocks (0: what the SMs hold)


class Int4Config(NamedTuple):
    tiles: int  # 16-row tiles of output a block (gated: 1, its gate and up tiles)
    warps: int  # warps of a block, each a contiguous 1 / warps of K's steps
    unroll: int  # steps of W (and scales) a warp keeps loaded ahead
    min_blocks: int = 1  # blocks an SM must hold (__launch_bounds__: caps the registers)


# A/B knob: (kind, n, k, gated) -> Int4Config, or a plain (tiles, warps, unroll, min_blocks)
# tuple (what quant_ab.py's --variant literals can give); q/k/v with rotary counts as gated
CONFIG_OVERRIDES: dict = {}


def pick_config(n: int, k: int, gated: bool, multiprocessors: int = 132,
                kind: str = "int4") -> Int4Config:
    """One tile a block; 8 warps where they split K's steps evenly with at least two each
    (else the most that do); two steps in flight, four for gate/up; registers capped so
    that two blocks fit an SM (persistent blocks: one, whose registers hold the next tile's
    loads through the epilogue; capped for two, the 8B's variants spill). The H100 sweep
    at one row (2026-12-05, int4_gemv_sweep.py: 36 configs a product) put this rule within
    5% of the best config of each of the 8B's products: qkv (rotary) 8.30 us, o 5.68,
    gate/up 29.8, down 15.5 (best 14.8)."""
    if (kind, n, k, gated) in CONFIG_OVERRIDES:
        return Int4Config(*CONFIG_OVERRIDES[(kind, n, k, gated)])
    steps = k // step_columns(kind)
    warps = next(w for w in (8, 16, 4, 2, 1) if steps % w == 0 and steps // w >= 2 or w == 1)
    unroll = min(4 if gated else 2, max(1, steps // warps))
    return Int4Config(1, warps, unroll, 1 if _persists(steps // warps, unroll) else 2)


def _persists(steps_a_warp: int, unroll: int) -> bool:
    """Whether a launch takes persistent blocks: PERSISTENT, and a tile's steps fill the
    warp's slots evenly (the next tile's first steps go into the slots its last free)."""
    return PERSISTENT and steps_a_warp % unroll == 0


def why_not(x: torch.Tensor, weight, gated: bool = False) -> Optional[str]:
    """None where int4_gemv takes x [M, K] @ weight^T, else why not."""
    if not ENABLED:
        return "off (int4_gemv.ENABLED)"
    if not isinstance(weight, QuantizedWeight) or weight.kind not in ENABLED_KINDS:
        return f"not a weight of {sorted(ENABLED_KINDS)}"
    if not x.is_cuda or envs.triton_interpreted() or torch.version.hip:
        return "not an NVIDIA GPU"
    if torch.cuda.get_device_capability(x.device) < ((8, 9) if weight.kind == "fp8" else (8, 0)):
        return "needs compute capability 8.0 (bf16 MMA; fp8's conversion: 8.9)"
    if x.dtype not in (torch.bfloat16, torch.float16) or x.dim() != 2:
        return f"x must be 2-D bf16 or fp16, got {x.dtype} {tuple(x.shape)}"
    rows, k = x.shape
    n = weight.out_features // 2 if gated else weight.out_features
    if not 0 < rows <= MAX_X_ROWS:
        return f"{rows} rows (at most {MAX_X_ROWS})"
    step = step_columns(weight.kind)
    grouped = weight.kind == "int4"  # int8 / fp8: per output row (no groups) only
    if (weight.group_size % step if grouped else weight.group_size) or k != weight.in_features \
            or k % step:
        return (f"K {k} must be a multiple of {step}"
                + (f" and the group {weight.group_size} too" if grouped else ", per-row scales"))
    cfg = _config(x, n, gated, weight.kind)
    if n % (16 * cfg.tiles) or (k // step) % cfg.warps:
        return f"{cfg} does not divide N {n} / K {k}"
    if grouped and (_scale_name(weight) not in SCALE_KINDS
                    or weight.offset is None or weight.offset.dtype != weight.scale.dtype):
        return "scales and offsets must be float16, bfloat16 or float32 alike"
    if not grouped and weight.scale.dtype != torch.float32:
        return "per-row scales must be float32"
    if (weight.data.data_ptr() % 16 or not weight.data.is_contiguous()
            or x.data_ptr() % 16 or x.stride(1) != 1 or x.stride(0) % 8):
        return "W and x need 16-byte aligned rows"
    if not nvrtc.available():
        return "NVRTC or the CUDA driver cannot be loaded"
    return None


def _scale_name(weight: QuantizedWeight) -> str:
    return str(weight.scale.dtype).removeprefix("torch.")


def _config(x: torch.Tensor, n: int, gated: bool, kind: str) -> Int4Config:
    return pick_config(n, x.shape[1], gated, multiprocessors(x.device)[0] or 132, kind)


def _persistent_blocks(x: torch.Tensor, cfg: Int4Config, k: int, kind: str,
                       tiles: int) -> int:
    """The blocks of a persistent launch of `tiles` tiles, or 0 for a block a tile."""
    if not _persists(k // step_columns(kind) // cfg.warps, cfg.unroll):
        return 0
    held = (multiprocessors(x.device)[0] or 132) * cfg.min_blocks
    return min(tiles, PERSISTENT_GRID or held)


def _launch(x: torch.Tensor, weight: QuantizedWeight, y: torch.Tensor, n: int, gated: bool,
            bias=None, parts_in=None, eps: float = 0.0, residual=None, norm_weight=None,
            scaled=None, parts_out=None, pdl: bool = True, rope: tuple = (0, 0, 0),
            rope_args: tuple = (None, None, None, None), grid: int = 0) -> None:
    """rope: (query heads, key/value heads, half a head's dims) of a q/k/v product and
    rope_args its (positions, cos_sin, slot_mapping, kv_cache); grid: its tiles."""
    rows, k = x.shape
    cfg = _config(x, n, gated or any(rope), weight.kind)
    pdl = pdl_active(x.device, pdl)
    positions, cos_sin, slots, kv = rope_args
    tiles = grid or n // (16 * cfg.tiles)
    persistent = _persistent_blocks(x, cfg, k, weight.kind, tiles)
    options = defines(bf16=x.dtype == torch.bfloat16,
                      scale_kind=SCALE_KINDS.index(_scale_name(weight)), k=k,
                      group=weight.group_size or step_columns(weight.kind), tiles=cfg.tiles,
                      warps=cfg.warps, kind=weight.kind,
                      unroll=cfg.unroll, gated=gated, norm_in=parts_in is not None,
                      norm_out=parts_out is not None, has_bias=bias is not None, pdl=pdl,
                      rope=rope, fp8_cache=kv is not None and kv.dtype == torch.float8_e4m3fn,
                      min_blocks=cfg.min_blocks, persist=persistent > 0)
    kernel = nvrtc.load(SOURCE, "int4_gemv", options, x.device)
    p = nvrtc.pointer
    args = [p(x), ctypes.c_int(rows), ctypes.c_int(k), ctypes.c_int(x.stride(0)),
            p(weight.data), ctypes.c_int(n), p(weight.scale), p(weight.offset), p(bias), p(y),
            ctypes.c_int(y.stride(0)), p(parts_in),
            ctypes.c_int(0 if parts_in is None else parts_in.shape[0]), ctypes.c_float(eps),
            p(residual), p(norm_weight), p(scaled), p(parts_out), p(positions), p(cos_sin),
            p(slots), p(kv), ctypes.c_long(0 if kv is None else kv.stride(0) * kv.element_size()),
            ctypes.c_int(tiles)]
    kernel.launch((persistent or tiles, 1, 1), (32 * cfg.warps, 1, 1), args,
                  torch.cuda.current_stream(x.device).cuda_stream, pdl)


def blocks(x: torch.Tensor, weight: QuantizedWeight, n: int, gated: bool = False) -> int:
    """The tiles of a launch (its blocks, unless persistent): the rows of a PendingNorm's
    parts it leaves."""
    return n // (16 * _config(x, n, gated, weight.kind).tiles)


def int4_gemv(x: torch.Tensor, weight: QuantizedWeight, bias: Optional[torch.Tensor] = None,
              gated: bool = False, norm_parts: Optional[torch.Tensor] = None,
              eps: float = 0.0, pdl: bool = True) -> torch.Tensor:
    """x [M, K] @ W [N, K]^T (+ bias) -> [M, N]; gated (no bias): silu(gate) * up
    -> [M, N / 2]. With norm_parts ([P, MAX_ROWS] float32), x is a PendingNorm's scaled
    g * s and the product is of RMSNorm(s) (eps its epsilon). `why_not` must be None."""
    if gated and bias is not None:
        raise ValueError("gated needs no bias")
    n = weight.out_features // 2 if gated else weight.out_features
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    _launch(x, weight, y, n, gated, bias=None if bias is None else bias.contiguous(),
            parts_in=checked_parts(norm_parts), eps=eps, pdl=pdl)
    return y


def int4_gemv_add_norm(x: torch.Tensor, weight: QuantizedWeight, bias: Optional[torch.Tensor],
                       residual: torch.Tensor, norm_weight: torch.Tensor,
                       pdl: bool = True) -> PendingNorm:
    """s = residual + x @ W^T (+ bias), and the RMSNorm (weight norm_weight [N]) after it
    left pending (kernels/norm_epilogue.py): PendingNorm(g * s, parts, s)."""
    rows, n = x.shape[0], weight.out_features
    for name, t, shape in (("residual", residual, (rows, n)), ("norm weight", norm_weight, (n,))):
        if t.shape != shape or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"int4_gemv_add_norm: the {name} must be {x.dtype} {shape}, got "
                             f"{t.dtype} {tuple(t.shape)}")
    pending = PendingNorm(
        scaled=torch.empty(rows, n, dtype=x.dtype, device=x.device),
        parts=torch.empty(blocks(x, weight, n), MAX_ROWS, dtype=torch.float32,
                          device=x.device),
        residual=torch.empty(rows, n, dtype=x.dtype, device=x.device))
    _launch(x, weight, pending.residual, n, False,
            bias=None if bias is None else bias.contiguous(), residual=residual.contiguous(),
            norm_weight=norm_weight.contiguous(), scaled=pending.scaled,
            parts_out=pending.parts, pdl=pdl)
    return pending


def rope_why_not(x: torch.Tensor, weight, positions: torch.Tensor, cos_sin: torch.Tensor,
                 kv_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int,
                 num_kv_heads: int) -> Optional[str]:
    """None where int4_gemv_qkv_rope takes the q/k/v product, else why not."""
    why = why_not(x, weight)
    if why:
        return why
    head_dim = cos_sin.shape[-1]
    if head_dim % 32 or weight.out_features != (num_heads + 2 * num_kv_heads) * head_dim:
        return f"heads of {head_dim} dims (a multiple of 32) that the rows do not make"
    if (cos_sin.dtype != torch.float32 or not cos_sin.is_contiguous()
            or not kv_cache.is_contiguous() or kv_cache.shape[-2:] != (num_kv_heads, head_dim)
            or kv_cache.dtype not in (x.dtype, torch.float8_e4m3fn)):
        return "cos_sin float32 and a contiguous cache of the activations' dtype or fp8"
    if (kv_cache.dtype == torch.float8_e4m3fn
            and torch.cuda.get_device_capability(x.device) < (8, 9)):
        return "an fp8 cache needs compute capability 8.9"
    if positions.dtype != torch.int64 or slot_mapping.dtype != torch.int64:
        return "positions and slots must be int64"
    return None


def int4_gemv_qkv_rope(x: torch.Tensor, weight: QuantizedWeight, bias: Optional[torch.Tensor],
                       positions: torch.Tensor, cos_sin: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor, num_heads: int, num_kv_heads: int,
                       norm_parts: Optional[torch.Tensor] = None, eps: float = 0.0,
                       pdl: bool = True) -> torch.Tensor:
    """kernels/skinny_gemm.py's `skinny_qkv_rope` for an int4 W (`rope_why_not` None):
    x [M, K] @ W^T with q and k rotated, k and v written to the cache at the rows' slots
    -> q [M, Hq, D]."""
    rows, head_dim = x.shape[0], cos_sin.shape[-1]
    if positions.shape != (rows,) or slot_mapping.shape != (rows,):
        raise ValueError(f"int4_gemv_qkv_rope: {rows} rows need as many positions and slots, "
                         f"got {tuple(positions.shape)} and {tuple(slot_mapping.shape)}")
    q = torch.empty(rows, num_heads, head_dim, dtype=x.dtype, device=x.device)
    half = head_dim // 2
    _launch(x, weight, q.view(rows, -1), weight.out_features, False,
            bias=None if bias is None else bias.contiguous(),
            parts_in=checked_parts(norm_parts), eps=eps, pdl=pdl,
            rope=(num_heads, num_kv_heads, half),
            rope_args=(positions.contiguous(), cos_sin, slot_mapping.contiguous(), kv_cache),
            grid=(num_heads + 2 * num_kv_heads) * (half // 16))
    return q
