"""The -D options of the int4 decode GEMV's CUDA source (kernels/int4_gemv_source.py).

Objects: SCALE_KINDS (the scales' dtypes, by SCALE_KIND), W_KINDS (each W format's W_KIND
option and bits: the one table of them), `row_bytes(k, kind)` (ROW_BYTES),
`step_columns(kind)` (K columns a step: the source's STEP_COLS) and `defines(...)` (the
-D options of one compiled variant; kernels/int4_gemv.py compiles SOURCE with them).
"""
from __future__ import annotations


SCALE_KINDS = ("float16", "float32", "bfloat16")  # the scales' and offsets' dtype
# W's formats (quant/formats.py): kind -> (the W_KIND option, bits a weight); each lane of
# a quad takes 16 bytes of a row a step, so a step is 4 * 128 / bits columns
W_KINDS = {"int4": (4, 4), "int8": (8, 8), "fp8": (9, 8)}


def row_bytes(k: int, kind: str) -> int:
    """Bytes of one row of W [N, K] stored as kind (int4: two columns a byte)."""
    return k * W_KINDS[kind][1] // 8


def step_columns(kind: str) -> int:
    """K columns a step (STEP_COLS): int4 128, int8 / fp8 64."""
    return 4 * 128 // W_KINDS[kind][1]


def defines(bf16: bool, scale_kind: int, k: int, group: int, tiles: int, warps: int,
            unroll: int, gated: bool, norm_in: bool, norm_out: bool, has_bias: bool,
            pdl: bool, rope: tuple[int, int, int] = (0, 0, 0), fp8_cache: bool = False,
            min_blocks: int = 1, kind: str = "int4", persist: bool = False) -> list[str]:
    """The -D options of one compiled variant (scale_kind: SCALE_KINDS' index; rope: the
    q/k/v product's query heads, key/value heads and half a head's dims, or zeros;
    min_blocks: blocks an SM must hold, which caps the registers a thread takes; persist:
    a block takes tiles blockIdx.x, + gridDim.x, ..., loading the next one's first steps
    while it finishes the last)."""
    values = dict(IS_BF16=bf16, SCALE_KIND=scale_kind, K_DIM=k, GROUP=group, TILES=tiles,
                  WARPS=warps, UNROLL=unroll, GATED=gated, NORM_IN=norm_in, NORM_OUT=norm_out,
                  HAS_BIAS=has_bias, USE_PDL=pdl, ROPE=any(rope), NUM_Q=rope[0],
                  NUM_KV=rope[1], HALF=rope[2], FP8_CACHE=fp8_cache, MIN_BLOCKS=min_blocks,
                  W_KIND=W_KINDS[kind][0], ROW_BYTES=row_bytes(k, kind), PERSIST=persist)
    return [f"-D{k}={int(v)}" for k, v in values.items()]
