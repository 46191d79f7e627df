"""Mixture-of-experts on the device, Triton: grouped expert GEMMs that take the expert ids
from the device, so nothing waits on the host and a CUDA graph can capture a MoE step.

Objects: `align_by_expert` (PyTorch ops, static shapes: the (token, k) assignments sorted
by local expert, each expert's run padded to a whole block of rows; `block_rows` picks
16-64 rows per block), `_moe_gemm` (the kernel),
`fused_moe` (the launcher: two GEMMs), `fused_moe_ref` (a loop over experts in PyTorch).
Shapes: x [T, H]; w13 [E, 2I, H] ([gate | up] rows); w2 [E, H, I]; weights, ids [T, k]
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

import torch
import triton
import triton.language as tl

BLOCK_M = 16  # assignment rows per block, at least: a decode step has ~1 per expert


def block_rows(assignments: int, num_experts: int) -> int:
    """Rows per block: about one block per expert when the step is balanced (16 to 64), so
    each expert's weights are read about once."""
    return min(64, max(BLOCK_M, triton.next_power_of_2(-(-assignments // num_experts))))


def align_by_expert(ids: torch.Tensor, first: int, num_local: int, block_m: int = BLOCK_M
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, k] global expert ids -> (sorted_ids [P] int32, block_expert [P / block_m]
    int32), P = ceil((T k + E (block_m - 1)) / block_m) block_m, all on the device."""
    flat = ids.flatten().long() - first  # [A] local expert per assignment
    flat = torch.where((flat >= 0) & (flat < num_local), flat, num_local)  # others' -> E
    n = flat.numel()
    counts = torch.zeros(num_local + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # no bincount: it sizes on the host
    counts[num_local:].zero_()  # other ranks' assignments get no rows (a kernel: no host
    # scalar is copied in, which a CUDA graph capture would refuse)
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
def _moe_gemm(x_ptr, w_ptr, out_ptr, sorted_ptr, block_expert_ptr, rw_ptr, N, K, num_rows,
              num_experts, stride_we, TOP_K: tl.constexpr, GATED: tl.constexpr, WEIGHTED: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              PRECISION: tl.constexpr):
    # GATED: x rows are tokens (row a // TOP_K), W has 2N rows (gate | up), out silu*up
    # [A, N]; else x rows are assignments, out [A, N] (times the routing weight if WEIGHTED)
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
        acc = tl.dot(xt, tl.trans(w), acc, input_precision=PRECISION)
        if GATED:
            w2 = tl.load(w_rows + N * K + kk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                         other=0.0)
            acc2 = tl.dot(xt, tl.trans(w2), acc2, input_precision=PRECISION)
    dt = out_ptr.dtype.element_ty
    out = acc.to(dt)
    if GATED:  # silu(gate) * up, each rounded as the unfused ops round
        g = out.to(tl.float32)
        act = (g * tl.sigmoid(g)).to(dt)
        out = (act.to(tl.float32) * acc2.to(dt).to(tl.float32)).to(dt)
    if WEIGHTED:
        rw = tl.load(rw_ptr + rows, mask=row_ok, other=0.0)
        out = (out.to(tl.float32) * rw.to(tl.float32)[:, None]).to(dt)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + ns[None, :], out,
             mask=row_ok[:, None] & n_ok[None, :])


def _gemm(x, w, out, sorted_ids, block_expert, rw, n, top_k, gated, weighted, block_m):
    blocks = block_expert.numel()
    _moe_gemm[(blocks, triton.cdiv(n, 64))](
        x, w, out, sorted_ids, block_expert, rw, n, x.shape[1], out.shape[0], w.shape[0],
        w.stride(0),
        TOP_K=top_k, GATED=gated, WEIGHTED=weighted, BLOCK_M=block_m, BLOCK_N=64,
        BLOCK_K=64, PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=4,
        num_stages=3)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor, first_expert: int = 0) -> torch.Tensor:
    """The experts' gated MLPs for each token's top-k experts, weighted and summed."""
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
    _gemm(x, w13, act, sorted_ids, block_expert, act, two_i // 2, top_k, True, False, block_m)
    per_assignment = torch.zeros(assigned, hidden, dtype=x.dtype, device=x.device)
    _gemm(act, w2, per_assignment, sorted_ids, block_expert,
          weights.reshape(-1).to(x.dtype).contiguous(), hidden, top_k, False, True, block_m)
    return per_assignment.view(tokens, top_k, hidden).float().sum(1).to(x.dtype)


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor, first_expert: int = 0) -> torch.Tensor:
    """Per expert (host loop): its tokens' gated MLP, times the routing weight, summed."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w13.shape[0]):
        token, slot = (ids == first_expert + e).nonzero(as_tuple=True)
        if token.numel():
            gate, up = torch.nn.functional.linear(x[token], w13[e]).chunk(2, dim=-1)
            y = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, w2[e])
            out.index_add_(0, token, (y * weights[token, slot, None].to(x.dtype)).float())
    return out.to(x.dtype)
