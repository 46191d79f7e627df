"""Mixture-of-experts on the device, Triton: grouped expert GEMMs that take the expert ids
from the device, so nothing waits on the host and a CUDA graph can capture a MoE step.

Objects: `align_by_expert` (the (token, k) assignments sorted by local expert, each
expert's run padded to a whole block of rows: one Triton program `_align` for a small
step, else PyTorch ops `align_by_expert_ref`; static shapes either way; `block_rows` picks
16-64 rows per block), `_moe_gemm` (the kernel; `pick_config` its tiles),
`fused_moe` (the launcher: two GEMMs), `fused_moe_ref` (a loop over experts in PyTorch,
quant/formats.py's `expert_weight` dequantizing quantized experts).
Shapes: x [T, H]; w13 [E, 2I, H] ([gate | up] rows); w2 [E, H, I] (16-bit, or int8 / fp8
with float32 per-channel scales w13_scale [E, 2I], w2_scale [E, H]); weights, ids [T, k]
(routing weights in x's dtype, global expert ids); experts [first, first + E) are this
rank's -> out [T, H] (this rank's partial sum; the caller all-reduces).
Flow: sorted_ids [P] lists assignment ids a = t * k + j grouped by expert, padded with
the sentinel T * k; block_expert [P / BLOCK_M] names each block's expert (E past the
last used block, and for assignments to other ranks' experts). GEMM 1: each program
gathers its block's tokens' rows of x, multiplies by its expert's gate and up panels,
and stores silu(gate) * up [T * k, I] at the assignments' rows. GEMM 2: the same blocks
read those rows, multiply by w2, scale by the routing weight and store [T * k, H]; the
k rows of each token are then summed in a fixed order (deterministic). Roundings follow
the unfused ops (each projection rounded to the dtype, silu rounded before the multiply).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tessera import envs
from tessera.kernels.hardware import program_shared_memory
from tessera.kernels.silu_and_mul import silu_mul
from tessera.quant.formats import expert_weight

BLOCK_M = 16  # assignment rows per block, at least: a decode step has ~1 per expert


def block_rows(assignments: int, num_experts: int) -> int:
    """Rows per block: about one block per expert when the step is balanced (16 to 64), so
    each expert's weights are read about once."""
    return min(64, max(BLOCK_M, triton.next_power_of_2(-(-assignments // num_experts))))


ALIGN_KERNEL_MAX = 16384  # assignments x experts (padded) that one program aligns


def align_by_expert(ids: torch.Tensor, first: int, num_local: int, block_m: int = BLOCK_M
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, k] global expert ids -> (sorted_ids [P] int32, block_expert [P / block_m]
    int32), P = ceil((T k + E (block_m - 1)) / block_m) block_m, all on the device: in one
    Triton program for a small step (`_align`), else in PyTorch ops (`align_by_expert_ref`)."""
    n = ids.numel()
    blocks = triton.cdiv(n + num_local * (block_m - 1), block_m)
    a_pad, e_pad = triton.next_power_of_2(max(n, 16)), triton.next_power_of_2(max(num_local, 16))
    runs_triton = ids.is_cuda or envs.triton_interpreted()
    if not runs_triton or a_pad * e_pad > ALIGN_KERNEL_MAX:
        return align_by_expert_ref(ids, first, num_local, block_m)
    sorted_ids = torch.empty(blocks * block_m, dtype=torch.int32, device=ids.device)
    block_expert = torch.empty(blocks, dtype=torch.int32, device=ids.device)
    _align[(1,)](ids, sorted_ids, block_expert, n, first, num_local, blocks,
                 BLOCK_M=block_m, A_PAD=a_pad, E_PAD=e_pad,
                 P_PAD=triton.next_power_of_2(blocks * block_m),
                 B_PAD=triton.next_power_of_2(blocks))
    return sorted_ids, block_expert


@triton.jit
def _align(ids_ptr, sorted_ptr, block_expert_ptr, n, first, num_local, num_blocks,
           BLOCK_M: tl.constexpr, A_PAD: tl.constexpr, E_PAD: tl.constexpr,
           P_PAD: tl.constexpr, B_PAD: tl.constexpr):
    """One program: a counting sort of the assignments by local expert, through a one-hot
    [A, E] matrix (each assignment's rank among its expert's is a running count)."""
    a = tl.arange(0, A_PAD)
    e = tl.load(ids_ptr + a, mask=a < n, other=0).to(tl.int32) - first
    local = (a < n) & (e >= 0) & (e < num_local)
    experts = tl.arange(0, E_PAD)
    onehot = (e[:, None] == experts[None, :]) & local[:, None]  # [A, E]
    hits = onehot.to(tl.int32)
    counts = tl.sum(hits, axis=0)  # [E]
    rank = tl.sum(tl.where(onehot, tl.cumsum(hits, axis=0) - 1, 0), axis=1)  # [A]
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_end = tl.cumsum(padded, axis=0)  # [E]
    dest = tl.sum(tl.where(onehot, (padded_end - padded)[None, :], 0), axis=1) + rank
    p = tl.arange(0, P_PAD)
    tl.store(sorted_ptr + p, tl.full([P_PAD], 0, tl.int32) + n, mask=p < num_blocks * BLOCK_M)
    tl.debug_barrier()  # the sentinels first, then the assignments over them
    tl.store(sorted_ptr + dest, a, mask=local)
    b = tl.arange(0, B_PAD)  # a block's expert: how many local runs end at or before it
    ended = (padded_end[None, :] <= (b * BLOCK_M)[:, None]) & (experts < num_local)[None, :]
    tl.store(block_expert_ptr + b, tl.sum(ended.to(tl.int32), axis=1), mask=b < num_blocks)


def align_by_expert_ref(ids: torch.Tensor, first: int, num_local: int, block_m: int = BLOCK_M
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`align_by_expert` in PyTorch ops (static shapes, no host sync: capturable too)."""
    flat = ids.flatten().long() - first  # [A] local expert per assignment
    flat = torch.where((flat >= 0) & (flat < num_local), flat, num_local)  # others' -> E
    n = flat.numel()
    counts = torch.zeros(num_local + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # no bincount: it sizes on the host
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)  # [E + 1]
    order = flat.argsort(stable=True)  # assignments by expert
    sorted_experts = flat[order]
    rank = torch.arange(n, device=ids.device) - (counts.cumsum(0) - counts)[sorted_experts]
    dest = (padded_end - padded)[sorted_experts] + rank
    blocks = triton.cdiv(n + num_local * (block_m - 1), block_m)
    sorted_ids = torch.full((blocks * block_m + 1,), n, dtype=torch.int32, device=ids.device)
    keep = sorted_experts < num_local
    sorted_ids.scatter_(0, torch.where(keep, dest, blocks * block_m), order.to(torch.int32))
    starts = torch.arange(blocks, device=ids.device) * block_m
    block_expert = torch.searchsorted(padded_end[:num_local], starts, right=True)
    return sorted_ids[:-1], block_expert.to(torch.int32)  # the extra slot took others'


@triton.jit
def _moe_gemm(x_ptr, w_ptr, out_ptr, sorted_ptr, block_expert_ptr, rw_ptr, scale_ptr, N, K,
              num_rows, num_experts, stride_we, TOP_K: tl.constexpr, GATED: tl.constexpr,
              WEIGHTED: tl.constexpr, SCALED: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    # GATED: x rows are tokens (row a // TOP_K), W has 2N rows (gate | up), out silu*up
    # [A, N]; else x rows are assignments, out [A, N] (times the routing weight if WEIGHTED).
    # SCALED: W holds int8 / fp8 values, widened to x's dtype as they load, and each output
    # row's float32 scale (scale_ptr [E, rows of W]) multiplies the accumulator after the loop
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert >= num_experts:  # past the last used block
        return
    rows = tl.load(sorted_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))  # assignment ids
    row_ok = rows < num_rows
    src = rows // TOP_K if GATED else rows
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    ks = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + expert.to(tl.int64) * stride_we + ns.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        xt = tl.load(x_ptr + src.to(tl.int64)[:, None] * K + kk[None, :],
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        w = tl.load(w_rows + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(xt, tl.trans(w.to(xt.dtype)), acc, input_precision=PRECISION)
        if GATED:
            w2 = tl.load(w_rows + N.to(tl.int64) * K + kk[None, :],
                         mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc2 = tl.dot(xt, tl.trans(w2.to(xt.dtype)), acc2, input_precision=PRECISION)
    if SCALED:
        scales = scale_ptr + expert.to(tl.int64) * (2 * N if GATED else N)
        acc = acc * tl.load(scales + ns, mask=n_ok, other=0.0)[None, :]
        if GATED:
            acc2 = acc2 * tl.load(scales + N + ns, mask=n_ok, other=0.0)[None, :]
    dt = out_ptr.dtype.element_ty
    out = acc.to(dt)
    if GATED:  # silu(gate) * up, each rounded as the unfused ops round
        out = silu_mul(out, acc2.to(dt))
    if WEIGHTED:
        rw = tl.load(rw_ptr + rows, mask=row_ok, other=0.0)
        out = (out.to(tl.float32) * rw.to(tl.float32)[:, None]).to(dt)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + ns[None, :], out,
             mask=row_ok[:, None] & n_ok[None, :])


class MoeConfig(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# From benchmarks/kernels/fused_moe_sweep.py (one H100, Mixtral's experts, bf16), by
# (gated, rows per block): 16-row blocks (batch 1 and 32) gate/up 154.7 / 607.9 us against 172.8 /
# 677.0 for 64 x 64 tiles in 3 stages, down 81.9 / 314.8 against 118.7 / 317.7; 64-row
# blocks (batch 256) gate/up 665.5 us and down 340.7 (the 16-row tiles: 748.5 and 621.4).
# 32-row blocks take the 64-row tiles (not swept).
TUNED = {(True, 16): MoeConfig(32, 256, 4, 4), (False, 16): MoeConfig(32, 512, 4, 3),
         (True, 64): MoeConfig(64, 128, 4, 4), (False, 64): MoeConfig(128, 64, 4, 3)}
CONFIG_OVERRIDES: dict = {}  # A/B knob (benchmarks/kernels/fused_moe_sweep.py): gated -> config
SMEM_MARGIN = 8 << 10  # shared memory left to the compiler's own use


@functools.lru_cache(maxsize=None)
def shared_memory_bytes(device: torch.device) -> int:
    """What one program may take on this GPU (228 KB on an H100, 164 KB on an A100, 99 KB
    on sm_89), less SMEM_MARGIN; off CUDA (the interpreter) the H100's."""
    if device.type != "cuda":
        return (228 << 10) - SMEM_MARGIN
    return program_shared_memory(device) - SMEM_MARGIN


def pick_config(gated: bool, block_m: int, itemsize: int, limit: int) -> MoeConfig:
    """The tuned tiles (or CONFIG_OVERRIDES'), with fewer stages, then narrower steps,
    while the stages' tiles (x rows and one or two W panels) exceed `limit` bytes."""
    cfg = CONFIG_OVERRIDES.get(gated, TUNED[gated, 16 if block_m <= 16 else 64])

    def smem(c: MoeConfig) -> int:
        return c.num_stages * (block_m + (2 if gated else 1) * c.block_n) * c.block_k * itemsize
    while smem(cfg) > limit and cfg.num_stages > 2:
        cfg = cfg._replace(num_stages=cfg.num_stages - 1)
    while smem(cfg) > limit and cfg.block_k > 32:
        cfg = cfg._replace(block_k=cfg.block_k // 2)
    return cfg


def _gemm(x, w, out, sorted_ids, block_expert, rw, n, top_k, gated, weighted, block_m,
          scale=None):
    blocks = block_expert.numel()
    cfg = pick_config(gated, block_m, x.element_size(), shared_memory_bytes(x.device))
    _moe_gemm[(blocks, triton.cdiv(n, cfg.block_n))](
        x, w, out, sorted_ids, block_expert, rw, rw if scale is None else scale, n, x.shape[1],
        out.shape[0], w.shape[0], w.stride(0), TOP_K=top_k, GATED=gated, WEIGHTED=weighted,
        SCALED=scale is not None, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor, first_expert: int = 0, w13_scale=None,
              w2_scale=None) -> torch.Tensor:
    """The experts' gated MLPs for each token's top-k experts, weighted and summed. With
    scales (float32 [E, 2I] and [E, H]), w13 and w2 hold int8 or fp8 values per output
    channel: w = value * scale."""
    tokens, hidden = x.shape
    num_local, two_i, _ = w13.shape
    top_k = ids.shape[1]
    if w13.shape[2] != hidden or w2.shape != (num_local, hidden, two_i // 2):
        raise ValueError(f"fused_moe: w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} do not "
                         f"fit hidden {hidden}")
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    assigned = tokens * top_k
    block_m = block_rows(assigned, num_local)
    sorted_ids, block_expert = align_by_expert(ids, first_expert, num_local, block_m)
    act = torch.empty(assigned, two_i // 2, dtype=x.dtype, device=x.device)
    _gemm(x, w13, act, sorted_ids, block_expert, act, two_i // 2, top_k, True, False, block_m,
          w13_scale)
    per_assignment = torch.zeros(assigned, hidden, dtype=x.dtype, device=x.device)
    _gemm(act, w2, per_assignment, sorted_ids, block_expert,
          weights.reshape(-1).to(x.dtype).contiguous(), hidden, top_k, False, True, block_m,
          w2_scale)
    return per_assignment.view(tokens, top_k, hidden).float().sum(1).to(x.dtype)


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor, first_expert: int = 0, w13_scale=None,
                  w2_scale=None) -> torch.Tensor:
    """Per expert (host loop): its tokens' gated MLP, times the routing weight, summed."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w13.shape[0]):
        token, slot = (ids == first_expert + e).nonzero(as_tuple=True)
        if token.numel():
            gate, up = torch.nn.functional.linear(
                x[token], expert_weight(w13, w13_scale, e, x.dtype)).chunk(2, dim=-1)
            y = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up,
                                           expert_weight(w2, w2_scale, e, x.dtype))
            out.index_add_(0, token, (y * weights[token, slot, None].to(x.dtype)).float())
    return out.to(x.dtype)
