"""Tiles of the skinny decode GEMM (kernels/skinny_gemm.py): which config a product takes.

Objects: `SkinnyConfig` (block_n rows of W a program, block_k columns a step, warps,
pipeline stages, split_k programs along K), `pick_config` (the entry: `tuned_config` for
a dense W or `quant_config` for a quantized one, the CONFIG_OVERRIDES /
QUANT_CONFIG_OVERRIDES A/B knobs, within the SMEM_CAP_BYTES one; `quant_config` also picks
how many programs share K), `a8_config` (an fp8 W times fp8 x: kernels/skinny_a8.py),
`fit_one_wave` (fewer stages where that makes a quantized product's grid one wave:
`pipeline_bytes`, the shared memory a program takes), `slices_fit`, `launch_warps`,
`weight_bits`, `shared_memory_bytes`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import triton

MAX_ROWS = 16  # one tl.dot column block; above this cuBLAS is the better GEMM
SMEM_CAP_BYTES: Optional[int] = None  # A/B knob: fewer stages, e.g. two programs per SM
CONFIG_OVERRIDES: dict = {}  # A/B knob: (n, k, gated) -> SkinnyConfig, for 2-byte weights


class SkinnyConfig(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1  # programs along K, their partial sums added by the last (split_k.py)
    # a quantized W's steps sliced along K among this many warps (the launch takes that
    # many: `launch_warps`; in groups a group a slice: kernels/quant_loops.py
    # `slices_dot`); 1: the warps split the rows
    slices: int = 1


def pick_config(n: int, k: int, gated: bool = False, itemsize: int = 2, kind: str = "",
                group: int = 0) -> SkinnyConfig:
    """`tuned_config` (or CONFIG_OVERRIDES' entry for 2-byte elements; for a quantized
    W (kind, group: quant/formats.py) `quant_config` or QUANT_CONFIG_OVERRIDES'), with
    stages dropped (down to 2) while over SMEM_CAP_BYTES if set."""
    if kind:
        cfg = QUANT_CONFIG_OVERRIDES.get((kind, n, k, gated),
                                         quant_config(kind, n, k, gated, itemsize, group))
    else:
        cfg = tuned_config(n, k, gated, itemsize)
        if itemsize == 2:
            cfg = CONFIG_OVERRIDES.get((n, k, gated), cfg)
    bits = weight_bits(kind, itemsize)
    while (SMEM_CAP_BYTES and cfg.num_stages > 2
           and shared_memory_bytes(cfg, gated, itemsize, bits) > SMEM_CAP_BYTES):
        cfg = cfg._replace(num_stages=cfg.num_stages - 1)
    return cfg


def tuned_config(n: int, k: int, gated: bool = False, itemsize: int = 2) -> SkinnyConfig:
    """Tile sizes for W [n, k] (per half when gated), the best of the H100 sweep in bf16:
    64-row panels in 128-wide steps six deep (four when gated: two panels per step); long
    rows (K >= 8192) in 512-wide steps. Steps are as many bytes wide for other element
    sizes (fp32: half the columns), so the stages fit Hopper's shared memory (bf16: 120 KB
    at most; see `shared_memory_bytes`). Tuned on Hopper (H100); `linear` uses it there
    only."""
    if k >= 8192:  # gated: two panels per step, so half as wide
        return SkinnyConfig(block_n=32, block_k=(512 if gated else 1024) // itemsize,
                            num_warps=4, num_stages=3)
    return SkinnyConfig(block_n=64, block_k=256 // itemsize, num_warps=4,
                        num_stages=4 if gated else 6)


# A/B knobs for quantized W: (kind, n, k, gated) -> SkinnyConfig; the bytes of each W row
# per K step; the shared memory the stages may fill; the programs (panels x splits of K)
# a product aims at
QUANT_CONFIG_OVERRIDES: dict = {}
QUANT_STEP_BYTES = 256
QUANT_SMEM_BYTES = 128 << 10
QUANT_PROGRAMS = 300
# A/B knobs: a quantized W's steps of QUANT_SLICED_STEP columns sliced along K among
# QUANT_SLICES[kind] warps (SkinnyConfig.slices; in groups where such a step is that many
# groups; a kind not named: the warps split the rows). H100, Llama-3-8B products at one row
# (2026-12-05, quant_gemm_sweep.py --slices), us unsliced -> sliced by this rule: int4 g128
# qkv 14.0 -> 13.1, o 10.7 -> 11.2, gate_up 41.3 -> 34.0, down 24.1 -> 21.7 (-11% in all);
# int8 qkv 12.3 -> 11.9, o 11.2 -> 11.3, gate_up 50.6 -> 44.9, down 25.0 -> 29.5 (split in
# 4; 25.5 whole). Off for every kind until the sliced mode's GPU tests (bf16) and an H200
# A/B have run (int4 first: {"int4": 4})
QUANT_SLICES: dict = {}
QUANT_SLICED_STEP = 512
# A/B knob: a quantized product's stages cut (not under 3) where that fits its grid in one
# wave (`fit_one_wave`). H100 (2026-12-05, ncu): the 8B's gated gate/up in int8 / fp8 /
# int4, 448 programs of 4 stages at 3 an SM (1.13 waves), kept its SMs busy 65% / 62% /
# 78% of its cycles against 80% for qkv; 3 stages fit 5 (int4: 4) an SM
QUANT_ONE_WAVE = True


def quant_config(kind: str, n: int, k: int, gated: bool = False, itemsize: int = 2,
                 group: int = 0) -> SkinnyConfig:
    """Tiles for a quantized W [n, k] (per half when gated), from the H200 sweeps at one row
    (benchmarks/kernels/quant_gemm_sweep.py, 2026-12-03, Llama-3-8B and 70B shapes):
    32-row panels on 2 warps (one warp a 16-row MMA tile, so no warp widens another's
    weights), 4 stages (6 were 25% slower on gate/up), each step QUANT_STEP_BYTES of every
    row (512 were 4-27% slower on the 70B's K = 8192; in groups: whole groups, at most 8 a
    step), and K split (split_k.py) in the fewest powers of two that make at least
    QUANT_PROGRAMS programs, each of at least four steps: one 32-row panel and its 2 warps
    can neither keep the memory busy nor widen fast enough, and a 4096-row product has
    only 128 panels. One target for every kind and K picks the sweep's best split of each
    product (us at one row, unsplit -> the rule's): int8 o 4096 x 4096 11.5 -> 9.5 (4),
    down 4096 x 14336 32.6 -> 19.8 (4), qkv 6144 x 4096 13.6 -> 11.8 (2); 70B o 8192 x
    8192 27.1 -> 20.8 (2), down 8192 x 28672 77.2 -> 58.5 (2), its qkv (10240 rows: 320
    panels) unsplit 30.2 (split 2: 34.9); int4 g128 down 46.8 -> 32.9, qkv 16.8 -> 13.9.
    The gate/up products (896 panels and more) stay whole. A kind in QUANT_SLICES takes
    steps of QUANT_SLICED_STEP columns sliced along K among that many warps (int4 g128:
    four groups a step, a group a warp)."""
    per_byte = 2 if kind == "int4" else 1
    block_k = max(min(QUANT_STEP_BYTES * per_byte, triton.next_power_of_2(k)), 16)
    if group:  # whole groups, one dot each
        block_k = min(max(block_k, group), 8 * group)
    slices, warps = 1, 2
    sliced_k = max(min(QUANT_SLICED_STEP, triton.next_power_of_2(k)), 16)
    wanted = QUANT_SLICES.get(kind, 1)
    if wanted > 1 and slices_fit(sliced_k, wanted, group):
        block_k, slices, warps = sliced_k, wanted, wanted
    panels, split = triton.cdiv(n, 32), 1
    while panels * split < QUANT_PROGRAMS and k >= 4 * 2 * split * block_k:
        split *= 2
    cfg = SkinnyConfig(block_n=32, block_k=block_k, num_warps=warps, num_stages=4,
                       split_k=split, slices=slices)
    bits = weight_bits(kind, itemsize)
    while (cfg.num_stages > 2
           and shared_memory_bytes(cfg, gated, itemsize, bits) > QUANT_SMEM_BYTES):
        cfg = cfg._replace(num_stages=cfg.num_stages - 1)
    return cfg


def a8_config(n: int, k: int, gated: bool = False) -> SkinnyConfig:
    """Tiles for an fp8 W times fp8 x (kernels/skinny_a8.py): 64-row panels on a warpgroup
    (the fp8 MMA's tile), 256-wide steps, K split as `quant_config` splits it, stages
    within QUANT_SMEM_BYTES (an estimate: not yet swept on a GPU)."""
    block_k = max(min(256, triton.next_power_of_2(k)), 32)  # the fp8 MMA's K is 32
    panels, split = triton.cdiv(n, 64), 1
    while panels * split < QUANT_PROGRAMS and k >= 4 * 2 * split * block_k:
        split *= 2
    cfg = SkinnyConfig(block_n=64, block_k=block_k, num_warps=4, num_stages=4, split_k=split)
    while cfg.num_stages > 2 and shared_memory_bytes(cfg, gated, 1, 8) > QUANT_SMEM_BYTES:
        cfg = cfg._replace(num_stages=cfg.num_stages - 1)
    return cfg


def pipeline_bytes(cfg: SkinnyConfig, gated: bool, itemsize: int, bits: int,
                   block_m: int) -> int:
    """The shared memory Triton's software pipeline gives a program: stages - 1 buffers of
    a step's W panel(s) (`bits` an element) and x tile (block_m rows) (as Nsight Compute
    read them on an H100: int8 gated 61,440 bytes, plain 36,864; int4 gated 73,728)."""
    panels = 2 if gated else 1
    return (cfg.num_stages - 1) * (panels * cfg.block_n * cfg.block_k * bits // 8
                                   + block_m * cfg.block_k * itemsize)


def fit_one_wave(cfg: SkinnyConfig, kind: str, n: int, k: int, gated: bool, itemsize: int,
                 block_m: int, sms: tuple[int, int]) -> SkinnyConfig:
    """A quantized W's (kind) config of a plain or gated product (grid: n / block_n panels
    times split_k) with fewer stages (not under 3) where that lets every program be
    resident at once: a grid a little over one wave runs its last programs on a few SMs
    while the rest idle. sms: (multiprocessors, shared memory bytes of each; 0: unknown,
    cfg as it is); a program also takes 1 KB of shared memory for the driver. Registers
    and warps are not counted (these programs of 2-4 warps hit the shared memory's limit
    first). A QUANT_CONFIG_OVERRIDES entry is taken as it is."""
    count, shared = sms
    programs = triton.cdiv(n, cfg.block_n) * cfg.split_k
    bits = weight_bits(kind, itemsize)

    def resident(c: SkinnyConfig) -> int:
        return count * (shared // (pipeline_bytes(c, gated, itemsize, bits, block_m) + 1024))

    if (not (QUANT_ONE_WAVE and count and shared) or (kind, n, k, gated) in
            QUANT_CONFIG_OVERRIDES or programs <= resident(cfg)):
        return cfg
    for stages in range(cfg.num_stages - 1, 2, -1):
        fewer = cfg._replace(num_stages=stages)
        if programs <= resident(fewer):
            return fewer
    return cfg


def slices_fit(block_k: int, slices: int, group: int) -> bool:
    """A step of block_k columns cuts into that many K slices: a group each (W in groups),
    else a multiple of 16 columns each (the MMA's K)."""
    return block_k == slices * group if group else block_k % (16 * slices) == 0


def launch_warps(cfg: SkinnyConfig, slices: int) -> int:
    """A program's warps: one a K slice (slices > 1); a sliced config run unsliced (the
    kind or mode takes no slices): one a 16-row MMA tile, so none widens another's rows."""
    if slices > 1:
        return slices
    return min(cfg.num_warps, max(1, cfg.block_n // 16)) if cfg.slices > 1 else cfg.num_warps


def weight_bits(kind: str, itemsize: int) -> int:
    """Bits of one W element: the activations' for a dense W, else the format's."""
    return {"": 8 * itemsize, "int8": 8, "fp8": 8, "int4": 4}[kind]


def shared_memory_bytes(cfg: SkinnyConfig, gated: bool, itemsize: int,
                        bits: Optional[int] = None) -> int:
    """What the software pipeline stages hold: W panel(s) (`bits` an element, by default
    the activations') and the x tile, per stage."""
    panels = 2 if gated else 1
    w_bytes = panels * cfg.block_n * cfg.block_k * (bits or 8 * itemsize) // 8
    return cfg.num_stages * (w_bytes + MAX_ROWS * cfg.block_k * itemsize)

