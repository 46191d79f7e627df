"""RMSNorm split across the two projections around it, for decode steps of a few rows.

Objects: `PendingNorm` (scaled, parts, residual: a norm left for the next projection),
`checked_parts` (the parts as a kernel takes them, or a ValueError), `add_pending_norm`
(jit: the epilogue of the projection before the norm), `load_parts` and `inverse_rms`
(jit: the projection after it), `pending_norm_ref` (PyTorch: what a
PendingNorm holds; the norm it stands for is kernels/reference.py's `rms_norm_ref` of its
residual).

RMSNorm(s) @ W^T = r * ((g * s) @ W^T), with r = rsqrt(mean(s^2) + eps) one scalar per row
and g the norm's weight. So no norm kernel runs between the o (or down) projection and the
gate/up (or next layer's q/k/v) one:
- the projection before the norm, split along the hidden dim into P programs, adds its
  output to the residual in its epilogue and writes, for its own columns: s (the new
  residual), g * s rounded to the dtype (the next projection's x) and its partial sum of
  s^2 (float32, one per row: parts [P, 16]);
- the projection after it reads g * s as x, as it reads any x (so its loop and pipeline
  are untouched), adds up the P partial sums in a fixed order (deterministic: no atomics)
  and multiplies its float32 accumulator by r before its own epilogue (bias, rotary,
  SiLU-and-mul).
No program waits for another's result beyond the kernel boundary already there.
Rounding: HF rounds s * r to the dtype, then multiplies by g in the dtype; here g * s is
rounded once and r scales the float32 product. The same order of error, not the same bits.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from tessera.kernels.skinny_config import MAX_ROWS

PARTS_ROWS = tl.constexpr(MAX_ROWS)  # a row of parts: MAX_ROWS sums, whatever BLOCK_M


def checked_parts(parts: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A pending norm's partial sums as a kernel takes them: float32 [P, MAX_ROWS],
    contiguous (None stays None); ValueError naming what came otherwise."""
    if parts is None:
        return None
    if parts.dim() != 2 or parts.shape[1] != MAX_ROWS or parts.dtype != torch.float32:
        raise ValueError(f"a pending norm's parts are float32 [P, {MAX_ROWS}], got "
                         f"{parts.dtype} {tuple(parts.shape)}")
    return parts.contiguous()


class PendingNorm(NamedTuple):
    """RMSNorm(residual) * g, left for the next projection to finish."""
    scaled: torch.Tensor  # [T, H] g * s in the activations' dtype (the next x)
    parts: torch.Tensor  # [P, ROWS] float32 partial sums of s^2 (rows past T are 0)
    residual: torch.Tensor  # [T, H] s, the new residual


@triton.jit
def add_pending_norm(out, res, g, ns, ms, ok, y_ptr, stride_ym, scaled_ptr, part_ptr, pid,
                     BLOCK_M: tl.constexpr):
    """out, res: [BLOCK_N, BLOCK_M] this program's output tile and the residual's (columns
    ns of rows ms, in the dtype); g [BLOCK_N] the norm's weight. Stores s = res + out to
    y, g * s to scaled and the tile's sum of s^2 per row to parts[pid] (zeros past
    BLOCK_M)."""
    s = out + res  # added in the dtype, as the unfused model adds
    offs = ms[None, :] * stride_ym + ns[:, None]
    tl.store(y_ptr + offs, s, mask=ok)
    sf = tl.where(ok, s.to(tl.float32), 0.0)
    tl.store(scaled_ptr + offs, (sf * g.to(tl.float32)[:, None]).to(s.dtype), mask=ok)
    sums = tl.sum(sf * sf, axis=0)  # [BLOCK_M]
    if BLOCK_M < PARTS_ROWS:  # placed in a row of PARTS_ROWS, zeros after
        row = tl.arange(0, PARTS_ROWS)
        sums = tl.sum(tl.where(row[None, :] == ms[:, None], sums[:, None], 0.0), axis=0)
        ms = row
    tl.store(part_ptr + pid * PARTS_ROWS + ms, sums)


@triton.jit
def load_parts(part_ptr, ms, num_parts, PART_BLOCK: tl.constexpr):
    """The partial sums of s^2 [PART_BLOCK, len(ms)] (float32; 0 past num_parts)."""
    ps = tl.arange(0, PART_BLOCK)
    return tl.load(part_ptr + ps[:, None] * PARTS_ROWS + ms[None, :],
                   mask=(ps < num_parts)[:, None], other=0.0)


@triton.jit
def inverse_rms(parts, hidden, eps):
    """r [BLOCK_M] = rsqrt(mean(s^2) + eps) from the partial sums."""
    return tl.rsqrt(tl.sum(parts, axis=0) / hidden + eps)


def pending_norm_ref(s: torch.Tensor, weight: torch.Tensor, block_n: int,
                     rows: int) -> PendingNorm:
    """What `add_pending_norm` leaves for s [T, H] whose columns the programs take block_n
    at a time, with `rows` rows of parts."""
    sf = s.float()
    starts = range(0, s.shape[1], block_n)
    parts = torch.zeros(len(starts), rows, dtype=torch.float32, device=s.device)
    for p, c in enumerate(starts):
        parts[p, :s.shape[0]] = sf[:, c:c + block_n].pow(2).sum(-1)
    return PendingNorm((sf * weight.float()).to(s.dtype), parts, s)
