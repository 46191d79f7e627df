"""GPTQ: int4 weights whose rounding errors are spread over the columns not yet rounded,
weighted by the inputs a calibration text gives the layer (Frantar et al., 2022, "GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Objects: `gptq_int4(w, hessian, group_size, ..., act_order)` -> QuantizedWeight (quant/formats.py's
int4: q, scale and offset per group of `group_size` columns), `output_error(w, qw,
hessian)` (the summed squared error of the layer's outputs over the calibration inputs,
tr((W - Q) H (W - Q)^T)), HessianRecorder (a linear method that adds each input's x^T x
into its layer's sum and computes densely), DAMP, BLOCK.

What it minimises: for a layer y = x W^T and calibration inputs X [T, K], the outputs'
squared error ||X W^T - X Q^T||^2 = tr((W - Q) H (W - Q)^T) with H = X^T X [K, K]. Rows of
W are independent given H (so stacked q/k/v or gate/up, and TP shards, quantize as one
matrix or as pieces alike); columns are not: once column j is rounded, its error e_j
(divided by the Cholesky factor's diagonal) is taken out of the columns after it, in
proportion to the inverse Hessian's row (the optimal compensation under H), and those
columns are rounded in turn. Round-to-nearest is the special case H = I.

Flow of `gptq_int4`: H damped (DAMP times its mean diagonal on the diagonal; inputs that
were always zero get 1 and their columns 0) -> U, the upper Cholesky factor of H^-1 ->
columns in BLOCK-wide blocks, left to right; within a block, column by column: at the
first column of a group, that group's scale and offset are fitted (formats.INT4_FIT's
fit, quant/int4_fit.py) to the group's present (error-compensated) weights and rounded to
scale_dtype; the column is rounded to its nearest level q, its error e = (w - (s q + o)) /
U[j, j] is subtracted from the block's later columns (e U[j, j:]); after the block, its
errors update every later column at once (the "lazy batch" update, one matmul). The
result is packed as quantize_int4's is.
act_order: columns taken in order of their inputs' size (H's diagonal, largest first), so
the columns that matter most are rounded while the most columns remain to absorb their
errors; each group's scale and offset are then fitted from W before any column is rounded
("static groups"), and column j stays in group j // G, so the stored layout is the plain
one every int4 kernel and GPTQ checkpoint reader assumes (no g_idx).
"""
from __future__ import annotations

from typing import Optional

import torch

from tessera.quant import formats
from tessera.quant.int4_fit import fit_int4, levels, minmax_int4

# of H's mean diagonal, added to its diagonal (GPTQ's percdamp; its paper's 0.01 assumes
# ~260k calibration tokens: with 4096, fewer than down_proj's K, H is rank-deficient and
# the damping decides the rest). int4/128, largest input first, 4096 tokens of
# dataclasses.py: Qwen2.5-Coder-0.5B +5.73% at 0.01, +4.39% at 0.1; 1.5B +6.65%, +6.18%
DAMP = 0.1
BLOCK = 128  # columns a block: their errors reach the later columns in one matmul


def _inverse_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U [K, K] the upper Cholesky factor of the damped H^-1; dead [K] the inputs
    never seen nonzero (their H diagonal 0)."""
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    diag = torch.diagonal(h)
    diag += damp * diag.mean()
    lower = torch.linalg.cholesky(h)
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True).float(), dead


def gptq_int4(w: torch.Tensor, hessian: torch.Tensor, group_size: int = formats.INT4_GROUP,
              scale_dtype: Optional[torch.dtype] = None, damp: float = DAMP,
              block: int = BLOCK, fit: Optional[str] = None,
              act_order: bool = False) -> formats.QuantizedWeight:
    """w [N, K], hessian [K, K] (sum of x^T x over calibration inputs x [T, K]) -> int4 in
    groups of group_size along K, scales and offsets in scale_dtype (default w's dtype),
    fitted by `fit` (default formats.INT4_FIT) to the compensated weights (act_order: to
    W, the columns taken largest input first)."""
    n, k = w.shape
    formats._check_groups(k, group_size, "int4")
    if hessian.shape != (k, k):
        raise ValueError(f"a Hessian of shape {tuple(hessian.shape)} does not fit a weight of "
                         f"{k} columns")
    if not torch.isfinite(hessian).all():
        raise ValueError("the Hessian has non-finite entries (the calibration inputs overflowed)")
    fit = fit or formats.INT4_FIT
    if fit not in formats.INT4_FITS:
        raise ValueError(f"unknown int4 fit {fit!r}; choose one of {', '.join(formats.INT4_FITS)}")
    fit_groups = fit_int4 if fit == "lsq" else minmax_int4
    dtype = scale_dtype or w.dtype
    block = max(group_size, block // group_size * group_size)  # whole groups a block
    hessian = hessian.to(w.device)
    work = w.float().clone()  # [N, K], compensated as columns are rounded
    dead = torch.diagonal(hessian) == 0
    work[:, dead] = 0.0
    scale = torch.empty(n, k // group_size, dtype=dtype, device=w.device)
    offset = torch.empty_like(scale)
    order = torch.arange(k, device=w.device)
    if act_order:  # groups fitted first, from W; columns taken largest input first
        s, o = fit_groups(work.reshape(n, k // group_size, group_size))
        scale.copy_(s), offset.copy_(o)
        order = torch.argsort(torch.diagonal(hessian), descending=True, stable=True)
        work, hessian = work[:, order], hessian[order][:, order]
    u, _ = _inverse_factor(hessian, damp)
    q = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    for start in range(0, k, block):
        stop = min(start + block, k)
        cols = work[:, start:stop]  # a view: updated in place
        errors = torch.empty_like(cols)
        u_block = u[start:stop, start:stop]
        for j in range(stop - start):
            col = int(order[start + j])
            g = col // group_size
            if act_order:
                s_f, o_f = scale[:, g].float(), offset[:, g].float()
            elif col % group_size == 0:  # the group's fit, from its compensated weights
                s, o = fit_groups(cols[:, j:j + group_size])  # [N]
                scale[:, g], offset[:, g] = s.to(dtype), o.to(dtype)
                s_f, o_f = scale[:, g].float(), offset[:, g].float()
            level = levels(cols[:, j:j + 1], s_f, o_f)[:, 0]  # [N]
            q[:, col] = level.to(torch.uint8)
            err = (cols[:, j] - (level * s_f + o_f)) / u_block[j, j]
            cols[:, j:] -= err[:, None] * u_block[j, j:][None, :]
            errors[:, j] = err
        if stop < k:
            work[:, stop:] -= errors @ u[start:stop, stop:]
    return formats.QuantizedWeight("int4", formats.pack_int4(q), scale, offset, group_size)


def output_error(w: torch.Tensor, qw: formats.QuantizedWeight,
                 hessian: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the layer's summed squared output error over the
    calibration inputs whose x^T x sum is hessian."""
    d = w.float() - formats.dequantize(qw, torch.float32).to(w.device)
    return float(((d @ hessian.float().to(w.device)) * d).sum())


class HessianRecorder:
    """A linear method (quant/base.py) for calibration: each product's input x [T, K] is
    added into `hessian` (float32 [K, K], x^T x) and the product computed densely by the
    layer's own method, never fused (so every input arrives here, unnormed as the layer
    sees it). Put on a layer for the calibration passes, then taken off."""

    def __init__(self, inner, in_features: int, device: torch.device):
        self.inner = inner
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def __getattr__(self, name):  # everything else is the dense method's
        return getattr(self.inner, name)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.hessian.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        self.add(x)
        return self.inner.apply_many(layer, x)

    def fuses_gated(self, layer, x) -> bool:
        return False

    def fuses_rope(self, layer, x) -> bool:
        return False

    def fuses_norms(self, layer, x) -> bool:
        return False
