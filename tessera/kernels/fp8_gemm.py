"""FP8 x FP8 GEMM for few rows (decode batches), Triton: y = (xq @ Wq^T) * sx * sw (+ bias),
both operands e4m3 on the tensor cores, K split among programs where N has few panels.

Why: at 17-128 rows (a decode batch) cuBLASLt's fp8 GEMM (torch._scaled_mm) reads its
weights at 1.6-2.0 TB/s on Llama-3-8B's N = 4096 products (H200, 2026-12-04: o 13.6 us,
down 36.5 us at 64 rows, slower than bf16 cuBLAS with the activations' quantization
added), too few tiles to keep the memory busy. Here each program owns BLOCK_N rows of W
and BLOCK_M rows of x over 1/SPLIT of K, so a 4096-row W makes 64 panels x SPLIT programs,
and the last program of a panel adds the partial sums (kernels/split_k.py: in K order,
so the result does not depend on who finishes last). Under PDL (kernels/pdl.py) each
program asks L2 for the first columns of its W rows before it waits for x.

Objects: `fp8_gemm(xq, sx, qw, bias, out_dtype, config)` (the launcher), `Fp8GemmConfig`,
`pick_config(m, n, k)`, CONFIG_OVERRIDES (A/B knob), `fp8_gemm_ref`.
Shapes: xq [M, K] e4m3 and sx [M, 1] float32 (kernels/fp8_rows.py), W [N, K] e4m3 with
sw [N] float32 (a QuantizedWeight of kind fp8) -> y [M, N] in out_dtype.
Flow: acc [BLOCK_N, BLOCK_M] = W_tile @ xq_tile^T over the program's K range (W as the
MMA's A operand: 64 rows a warpgroup; x's rows as its N), scaled by sw x sx (the sum is
linear, so before the split's reduction), reduced, biased and stored transposed into y.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from tessera.kernels import pdl, split_k
from tessera.kernels.pdl import pdl_launch_args
from tessera.kernels.l2_prefetch import line_columns, prefetch_columns, prefetch_l2
from tessera.quant.formats import QuantizedWeight

class Fp8GemmConfig(NamedTuple):
    block_m: int  # rows of x (the MMA's N)
    block_n: int  # rows of W (the MMA's M)
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1


CONFIG_OVERRIDES: dict = {}  # A/B knob: (block_m, n, k) -> Fp8GemmConfig
MANY_TILES = 264  # output tiles (two an SM of an H200's 132) from which steps are shorter
FEW_TILES = 48  # fewer tiles than this split K (a narrow W: too few programs to stream it)
SMEM_BYTES = 200 << 10  # what the pipeline stages may fill


def pick_config(m: int, n: int, k: int) -> Fp8GemmConfig:
    """x's rows in one block (16-128), 64-row W panels, K whole (H200 sweeps at 32, 64 and
    128 rows, 2026-12-04, Llama-3-8B products: splitting K was slower wherever W had 64
    panels or more, the fix-up's partials costing more than the extra programs gained,
    but for the down product at 128 rows): 256-wide steps, as many stages as SMEM_BYTES
    holds up to six (four at 128 rows), or where there are MANY_TILES tiles 128-wide
    three deep (64 rows, gate/up: 32.7 us against 34.1), in 128-row panels from 128 rows
    of x (37.0 us against 45.4). K is split in powers of two while there are fewer than
    FEW_TILES tiles (a narrow W), and in two at 65-128 rows where K >= 8192 and the tiles
    are fewer than MANY_TILES (down: 23.4 us against 28.7)."""
    block_m = max(16, triton.next_power_of_2(m))
    if (block_m, n, k) in CONFIG_OVERRIDES:
        return CONFIG_OVERRIDES[(block_m, n, k)]
    tiles = triton.cdiv(n, 64) * triton.cdiv(m, block_m)
    block_n, block_k, stages = 64, 256, 6
    many = tiles >= MANY_TILES
    if many:
        block_n, block_k, stages = (128 if block_m >= 128 else 64), 128, 3
    while stages > 2 and stages * (block_n + block_m) * block_k > SMEM_BYTES:
        stages -= 1
    split = 1
    while tiles * split < FEW_TILES and k >= 4 * 2 * split * block_k:
        split *= 2
    if split == 1 and block_m >= 128 and k >= 8192 and not many:
        split = 2
    return Fp8GemmConfig(block_m, block_n, block_k, 4, stages, split)


@triton.jit
def _fp8_gemm(x_ptr, sx_ptr, w_ptr, sw_ptr, b_ptr, y_ptr, work_ptr, count_ptr, M, N, K,
              K_PER, stride_xm, stride_ym, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
              EVEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, PREFETCH_K: tl.constexpr, LINE: tl.constexpr,
              USE_PDL: tl.constexpr):
    pid = tl.program_id(0)  # output tile: BLOCK_N rows of W x BLOCK_M rows of x
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    pid_n = pid // tiles_m
    pid_m = pid % tiles_m
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    n_ok = ns < N
    m_ok = ms < M
    ks = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + ns.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    x_rows = x_ptr + ms.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
    k_lo = pid_k * K_PER
    k_hi = tl.minimum(k_lo + K_PER, K)
    if USE_PDL and PREFETCH_K > 0:  # W: no kernel writes it, so asked of L2 before the wait
        prefetch_l2(w_ptr, w_rows + k_lo, n_ok, k_hi - k_lo, PREFETCH_K, LINE)
    pdl.wait(USE_PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if EVEN:
            w = tl.load(w_rows + k0 + ks[None, :])
            x = tl.load(x_rows + k0 + ks[None, :], mask=m_ok[:, None], other=0.0)
        else:
            k_ok = k0 + ks < k_hi
            w = tl.load(w_rows + k0 + ks[None, :], mask=n_ok[:, None] & k_ok[None, :],
                        other=0.0)
            x = tl.load(x_rows + k0 + ks[None, :], mask=m_ok[:, None] & k_ok[None, :],
                        other=0.0)
        # [BLOCK_N, BLOCK_M], summed in the MMA's own precision (Hopper's fp8 MMA adds in
        # fewer bits than float32, as cuBLASLt's "fast accumulation"; carrying the sum into
        # float32 every 128 columns halved the error and cost 40-90%: RESULTS, 2026-12-04)
        acc = tl.dot(w, tl.trans(x), acc)
    pdl.launch_dependents(USE_PDL)  # the next kernel may launch; it waits for y
    sw = tl.load(sw_ptr + ns, mask=n_ok, other=0.0)
    sx = tl.load(sx_ptr + ms, mask=m_ok, other=0.0)
    acc = acc * sw[:, None] * sx[None, :]
    if SPLIT > 1:  # the last program along K adds the partials
        acc, _, last = split_k.reduce_partials(acc, acc, work_ptr, count_ptr, pid, pid_k,
                                               False, SPLIT, BLOCK_N, BLOCK_M)
    else:
        last = True
    if last:
        if HAS_BIAS:
            acc += tl.load(b_ptr + ns, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + ms[None, :] * stride_ym + ns[:, None],
                 acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


def fp8_gemm(xq: torch.Tensor, sx: torch.Tensor, qw: QuantizedWeight,
             bias: Optional[torch.Tensor] = None, out_dtype: torch.dtype = torch.bfloat16,
             config: Optional[Fp8GemmConfig] = None, pdl: bool = True) -> torch.Tensor:
    """xq [M, K] e4m3 with row scales sx [M, 1] @ W^T (qw: fp8 [N, K], scales [N]) (+ bias
    [N]) -> y [M, N] in out_dtype."""
    if qw.kind != "fp8" or qw.group_size:
        raise ValueError(f"fp8_gemm takes per-channel fp8 weights, not {qw.kind} "
                         f"(group {qw.group_size})")
    m, k = xq.shape
    n = qw.data.shape[0]
    if qw.data.shape[1] != k:
        raise ValueError(f"fp8_gemm: x has {k} columns but the weight is {tuple(qw.data.shape)}")
    if xq.stride(1) != 1 or not qw.data.is_contiguous():
        raise ValueError("fp8_gemm: x's rows and the weight must be contiguous")
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    if m == 0 or n == 0:
        return y
    cfg = config or pick_config(m, n, k)
    k_per = split_k.k_per_split(k, cfg.block_k, cfg.split_k)
    split = split_k.splits(k, k_per)
    tiles = triton.cdiv(n, cfg.block_n) * triton.cdiv(m, cfg.block_m)
    line = line_columns(qw.data)
    prefetch = prefetch_columns(qw.data) // split  # each program's share, a power of two
    prefetch = 1 << (prefetch.bit_length() - 1) if prefetch >= line else 0
    work, count = y, y  # unused without a split
    if split > 1:
        work = split_k.workspace(tiles, split, cfg.block_n, xq.device, cfg.block_m)
        count = split_k.counters(xq.device)
    _fp8_gemm[(tiles, split)](
        xq, sx, qw.data, qw.scale, bias if bias is not None else qw.scale, y, work, count,
        m, n, k, k_per, xq.stride(0), y.stride(0), HAS_BIAS=bias is not None, SPLIT=split,
        EVEN=n % cfg.block_n == 0 and k % cfg.block_k == 0 and k_per % cfg.block_k == 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        PREFETCH_K=prefetch, LINE=line,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch_args(xq.device, pdl))
    return y


def fp8_gemm_ref(xq: torch.Tensor, sx: torch.Tensor, qw: QuantizedWeight,
                 bias: Optional[torch.Tensor] = None,
                 out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The float32 product of the dequantized operands, rounded once to out_dtype."""
    y = (xq.float() @ qw.data.float().t()) * sx.float() * qw.scale.float().view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)
