"""int4 groups' scale and offset fitted by least squares (data-free), not taken from the
group's minimum and maximum.

Objects: FIT_STEPS (the scale candidates' offsets r: a candidate step is the group's span /
(15 + r)), ROW_CHUNK_ELEMENTS (how many weights a chunk of rows fits at once),
`fit_int4(groups)` -> (scale, offset) float32, `minmax_int4(groups)` (the plain fit: step =
span / 15, offset = the minimum), `levels(groups, scale, offset)` (q rounded against a
fit: what formats.quantize_int4 stores), `squared_error(groups, scale, offset)` (the fit's
error with those q, per group).

Why: rounding each group onto the grid from its minimum to its maximum (min-max) spends
the 16 levels on the extremes; a 4-bit grid in groups of 128 re-rounds a model's weights
coarsely (+6% perplexity on the Qwen2.5-Coder GGUFs, +32% on SmolLM2 in groups of 64:
benchmarks/RESULTS.md). The fit here is the one llama.cpp's k-quants make
(make_qkx2_quants), unweighted: for each candidate step s_r = span / (15 + r), r in
FIT_STEPS (r = 0 is min-max's step; r > 0 clips the extremes, r < 0 leaves room; the
integers -2..-6 find a grid whose q span only 13..9 steps, as a GGUF K-quant block's
may, exactly), the
weights are rounded q = round((w - min) / s_r) clamped to [0, 15], and the scale and
offset that minimise sum (s q + o - w)^2 for those q are solved in closed form (least
squares on the group's sums of q, q^2, q x, x and x^2, x = w - min); the candidate of least squared
error wins, min-max itself (its own scale and offset) among them, so the fit's error is
never larger than min-max's (before the caller rounds scale and offset to their dtype and
rounds q against them: formats.quantize_int4). No calibration data, and row-local (each
group alone), so tensor-parallel shards quantize as they arrive.

Flow of `fit_int4`: groups float [..., G] -> flattened to [R, G] rows of one group each,
taken in chunks of ROW_CHUNK_ELEMENTS weights (bounded temporaries on any device) -> per
chunk, sums of x and x^2 once, then per candidate the q sums and the solved (s, o), the
error from the sums (no dequantized copy), the best kept -> scale, offset [...].
"""
from __future__ import annotations

import torch

LEVELS = 15  # int4: q in [0, 15]
# r: a candidate step is span / (15 + r); -6..-2: q spanning 9..13 steps (a K-quant block's)
FIT_STEPS = (-6.0, -5.0, -4.0, -3.0, -2.0) + tuple(round(-1.0 + 0.1 * i, 1) for i in range(21))
ROW_CHUNK_ELEMENTS = 1 << 24


def minmax_int4(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """groups float [..., G] -> (scale, offset) float32 [...]: step span / 15 from the
    group's minimum."""
    g = groups.float()
    low, high = g.amin(-1), g.amax(-1)
    return (high - low) / LEVELS, low


def levels(groups: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """groups [..., G], scale and offset [...] -> q = round((w - o) / s) in [0, 15], float32
    [..., G]: each weight's nearest level of the fit."""
    s = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    return torch.round((groups.float() - offset.float()[..., None]) / s).clamp_(0, LEVELS)


def squared_error(groups: torch.Tensor, scale: torch.Tensor,
                  offset: torch.Tensor) -> torch.Tensor:
    """sum over each group of (s q + o - w)^2, q = levels(...) -> [...]."""
    q = levels(groups, scale, offset)
    return (q * scale.float()[..., None] + offset.float()[..., None] - groups.float()
            ).square().sum(-1)


def _fit_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w float32 [R, G] -> (scale, offset) float32 [R] of least squared error. The fit is
    of the weights less their group's minimum (x >= 0), its offset moved back at the end:
    the error from the sums cancels less than with a group's mean far from zero."""
    n = w.shape[-1]
    low, high = w.amin(-1), w.amax(-1)  # [R]
    span = high - low
    x = w - low[:, None]  # [R, G], in [0, span]
    sx, sxx = x.sum(-1), torch.einsum("rg,rg->r", x, x)  # [R]
    tiny = torch.finfo(torch.float32).tiny

    def error(s, o, sq, sqq, sqx):  # sum (s q + o - x)^2 from the sums, [R]
        return sxx + s * s * sqq + n * o * o - 2 * s * sqx - 2 * o * sx + 2 * s * o * sq

    def sums(q):  # (sum q, sum q^2, sum q x), each [R]
        return q.sum(-1), torch.einsum("rg,rg->r", q, q), torch.einsum("rg,rg->r", q, x)

    best_s, best_o = span / LEVELS, torch.zeros_like(low)  # min-max
    q = torch.empty_like(x)  # [R, G], the candidate's levels
    torch.mul(x, (1.0 / best_s.clamp_min(tiny))[:, None], out=q).round_().clamp_(0, LEVELS)
    best_e = error(best_s, best_o, *sums(q))
    for r in FIT_STEPS:
        # a constant group (span 0) makes inv inf and q NaN: not ok, min-max stays
        inv = (LEVELS + r) / span.clamp_min(tiny)  # [R]
        torch.mul(x, inv[:, None], out=q).round_().clamp_(0, LEVELS)
        sq, sqq, sqx = sums(q)
        det = n * sqq - sq * sq  # an integer >= n - 1 unless every q is equal
        ok = det > 1e-12 * n * sqq
        s = torch.where(ok, (n * sqx - sq * sx) / torch.where(ok, det, 1.0), 0.0)
        o = (sx - s * sq) / n
        e = torch.where(ok & (s > 0), error(s, o, sq, sqq, sqx), torch.inf)
        better = e < best_e
        best_s = torch.where(better, s, best_s)
        best_o = torch.where(better, o, best_o)
        best_e = torch.where(better, e, best_e)
    return best_s, best_o + low


def fit_int4(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """groups float [..., G] (each the weights of one group) -> (scale, offset) float32
    [...], the least-squares fit over FIT_STEPS' candidate steps (min-max among them)."""
    lead, g = groups.shape[:-1], groups.shape[-1]
    rows = groups.reshape(-1, g)
    if not rows.numel():
        return minmax_int4(groups)
    per_chunk = max(1, ROW_CHUNK_ELEMENTS // g)
    scales, offsets = [], []
    for start in range(0, rows.shape[0], per_chunk):
        s, o = _fit_rows(rows[start:start + per_chunk].float())
        scales.append(s)
        offsets.append(o)
    return torch.cat(scales).reshape(lead), torch.cat(offsets).reshape(lead)
