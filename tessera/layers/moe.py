"""Mixture-of-experts: top-k routing and a grouped expert computation.

Objects: FusedMoE (all experts' weights stacked: w13 [E_local, 2 * I_local, H] holding
[gate | up], w2 [E_local, H, I_local]) and `route` (softmax over all experts, top-k, and
renormalization when the model asks for it, as Mixtral and Qwen2-MoE define it).
Forward: steps of up to FUSED_MAX_TOKENS tokens with kernel ops (CUDA with Triton) run
kernels/fused_moe.py, whose grouped GEMMs read the expert ids on the device (no host
sync, so decode steps are captured in CUDA graphs); longer steps sort tokens by expert and run one cuBLAS matmul
per expert over its tokens (a loop over experts, never over tokens), results weighted
and added back in expert order. KernelConfig.fused_moe switches: "auto" (kernel ops, up to
FUSED_MAX_TOKENS tokens), "always" (any device and length; on the CPU under
TRITON_INTERPRET=1), "off"; `fused_moe_captures(kernel, ops)` says whether decode steps
take the kernels, so that the model runner may capture them in CUDA graphs.
Quantized experts (the policy's format for `<prefix>`, e.g. model.layers.3.mlp.experts):
int8 or fp8 per output channel, w13_scale [E_local, 2 I_local] and w2_scale [E_local, H]
float32, quantized as each expert's pieces load; the kernels widen the values as they
load them and scale the accumulators. Parallelism: with expert parallelism, each TP rank owns E / tp whole experts; without
it, every rank holds every expert's slice of the intermediate dimension. Either way the
tokens are the same on every rank, and one all-reduce combines the partial sums.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config import KernelConfig
from tessera.distributed.parallel_state import all_reduce, expert_parallel, tp_rank, tp_size
from tessera.layers.context import current
from tessera.models.weight_utils import dense, narrow
from tessera.quant.formats import expert_weight, quantize
from tessera.quant.quantized import DATA_DTYPES
from tessera.quant_policy import parse_spec

logger = logging.getLogger(__name__)

FUSED_MAX_TOKENS = 512  # the largest decode CUDA graph; longer (prefill) steps loop


def fused_moe_captures(kernel: KernelConfig, ops) -> bool:
    """Whether decode steps (up to FUSED_MAX_TOKENS tokens) take the device-side kernels,
    so a MoE model's decode steps can be captured in CUDA graphs."""
    return kernel.fused_moe == "always" or (kernel.fused_moe == "auto" and ops.kernels)


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool, dtype: torch.dtype):
    """router_logits: [T, E] -> (weights [T, k] in dtype, expert ids [T, k])."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(dtype), ids


class FusedMoE(nn.Module):
    def __init__(self, num_experts: int, top_k: int, hidden: int, intermediate: int,
                 renormalize: bool, prefix: str = ""):
        super().__init__()
        ctx = current()
        self.prefix = prefix
        self.quant_kind = expert_format(ctx.quant_spec(prefix), prefix)  # None: 16-bit
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.ep = expert_parallel() and self.tp_size > 1
        if self.ep:
            if num_experts % self.tp_size:
                raise ValueError(f"{num_experts} experts cannot be split evenly over "
                                 f"{self.tp_size} expert-parallel ranks.")
            local = num_experts // self.tp_size
            self.first_expert, self.inter = self.tp_rank * local, intermediate
        else:
            if intermediate % self.tp_size:
                raise ValueError(f"expert width {intermediate} is not divisible by "
                                 f"TP={self.tp_size}")
            local, self.first_expert, self.inter = num_experts, 0, intermediate // self.tp_size
        self.local_experts = local
        dtype = DATA_DTYPES.get(self.quant_kind)  # None: the model's
        self.w13 = nn.Parameter(torch.empty(local, 2 * self.inter, hidden, dtype=dtype),
                                requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(local, hidden, self.inter, dtype=dtype),
                               requires_grad=False)
        self.w13.weight_loader = self.w2.weight_loader = self.weight_loader
        self.w13_scale = self.w2_scale = None
        if self.quant_kind:  # float32 per output channel, filled with the weights
            self.w13_scale = nn.Parameter(torch.empty(local, 2 * self.inter, dtype=torch.float32),
                                          requires_grad=False)
            self.w2_scale = nn.Parameter(torch.empty(local, hidden, dtype=torch.float32),
                                         requires_grad=False)
            self.w13_scale.derived = self.w2_scale.derived = True
        self.mode = ctx.kernel.fused_moe
        self.kernels = None  # kernels/fused_moe.py, imported where it may run
        if fused_moe_captures(ctx.kernel, ctx.ops):
            from tessera.kernels import fused_moe as kernels
            self.kernels = kernels

    def uses_fused(self, x: torch.Tensor) -> bool:
        """Whether a step of x's tokens runs the experts in the device-side kernels
        (kernels/fused_moe.py): up to FUSED_MAX_TOKENS tokens, or any with "always"."""
        return self.kernels is not None and (self.mode == "always"
                                             or x.shape[0] <= FUSED_MAX_TOKENS)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id) -> None:
        """shard_id: (expert id, "gate" | "up" | "down")."""
        expert, kind = shard_id
        e = expert - self.first_expert
        if not 0 <= e < self.local_experts:
            return  # another rank's expert
        start = 0 if self.ep else self.tp_rank * self.inter
        if kind == "down":
            self._store(param, e, 0, dense(narrow(loaded, 1, start, self.inter)))
        else:
            offset = 0 if kind == "gate" else self.inter
            self._store(param, e, offset, dense(narrow(loaded, 0, start, self.inter)))

    def _store(self, param: nn.Parameter, e: int, row: int, w: torch.Tensor) -> None:
        """Rows [row, row + len(w)) of expert e's matrix = w, quantized per row if the
        experts are."""
        rows = w.shape[0]
        if self.quant_kind is None:
            param.data[e, row:row + rows].copy_(w)
            return
        qw = quantize(self.quant_kind, w.to(param.device))
        param.data[e, row:row + rows].copy_(qw.data)
        scale = self.w2_scale if param is self.w2 else self.w13_scale
        scale.data[e, row:row + rows].copy_(qw.scale)

    def fill_random(self, generator: torch.Generator) -> None:
        """Random N(0, 0.02) experts (benchmarks), one expert matrix at a time."""
        for param in (self.w13, self.w2):
            for e in range(self.local_experts):
                w = torch.empty(param.shape[1:], device=param.device,
                                dtype=torch.float32 if self.quant_kind else param.dtype)
                self._store(param, e, 0, w.normal_(0.0, 0.02, generator=generator))

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """x: [T, H]; router_logits: [T, E] -> [T, H]."""
        weights, ids = route(router_logits, self.top_k, self.renormalize, x.dtype)
        if self.uses_fused(x):
            out = self.kernels.fused_moe(x, self.w13, self.w2, weights, ids, self.first_expert,
                                         self.w13_scale, self.w2_scale)
            return all_reduce(out) if self.tp_size > 1 else out
        return self._per_expert(x, weights, ids)

    def _per_expert(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor):
        """A cuBLAS product per expert over its tokens (their counts come to the host)."""
        flat = ids.flatten()  # [T * k]
        order = flat.argsort(stable=True)
        tokens = order // self.top_k  # token of each sorted assignment
        w_sorted = weights.flatten()[order]
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        out = torch.zeros_like(x)
        start = sum(counts[:self.first_expert])
        for e in range(self.local_experts):
            n = counts[self.first_expert + e]
            if n:
                tok = tokens[start:start + n]
                gate_up = F.linear(x[tok], expert_weight(self.w13, self.w13_scale, e, x.dtype))
                gate, up = gate_up.chunk(2, dim=-1)  # [n, I] each
                y = F.linear(F.silu(gate) * up,
                             expert_weight(self.w2, self.w2_scale, e, x.dtype))  # [n, H]
                out.index_add_(0, tok, y * w_sorted[start:start + n, None])
            start += n
        return all_reduce(out) if self.tp_size > 1 else out


def expert_format(spec: str, prefix: str):
    """The experts' format for a policy spec: None (16-bit), int8 or fp8, per output
    channel. The expert kernels have no grouped formats: int4 and grouped int8 experts
    are held in int8 per channel (logged)."""
    kind, group = parse_spec(spec)
    if kind == "none":
        return None
    if kind == "int4" or group:
        logger.warning("%s: MoE experts are held in int8 per channel (the expert kernels "
                       "have no %s format)", prefix or "experts", spec)
        return "int8"
    return kind
