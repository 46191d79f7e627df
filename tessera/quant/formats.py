"""Quantized weight formats: their layouts, the PyTorch quantizers and the references.

Objects: QuantizedWeight (one layer's quantized matrix, as the kernels take it), FP8_MAX,
INT4_GROUP (the default group), INT4_FIT (int4's fit), `quantize(kind, w, group_size)` -> QuantizedWeight and the
per-format `quantize_int8`, `quantize_fp8`, `quantize_int4`; `dequantize(qw, dtype)`;
`pack_int4` / `unpack_int4`; `expert_weight` (one MoE expert's matrix, dequantized); `quant_linear_ref(x, qw, bias)` (the product every quantized
kernel is tested against: x @ dequantize(qw)^T in float32, rounded to x's dtype).

Layouts (W is nn.Linear's [N, K]: N outputs, K inputs):
- int8 (W8A16): data int8 [N, K], symmetric per output channel: w = data * scale,
  scale float32 [N] = max|w_row| / 127; or, with group_size G (GGUF Q8_0: 32), per group
  along K: scale [N, K / G] (float16 or float32: the layer's choice).
- fp8: data float8_e4m3fn [N, K] per output channel: w = data * scale, scale float32 [N]
  = max|w_row| / 448 (rows of zeros get scale 1).
- int4 (W4A16): groups of G (group_size, 128 by default) along K; q in [0, 15] packed two
  per byte, data uint8 [N, K / 2] with column 2j in the low nibble of byte j and 2j + 1
  in the high one; w = q * scale + offset, scale and offset [N, K / G] (float16 in a
  16-bit model, else float32; an asymmetric zero point, fitted by least squares over
  candidate steps: quant/int4_fit.py; INT4_FIT "minmax": the group's minimum and span /
  15; GPTQ's and GGUF Q4_0's symmetric q - 8 is offset = -8 * scale, Q4_1's min its
  offset).
Quantizing is row-local (each output row, and each int4 group, on its own), so tensor-
parallel shards and the stacked q/k/v or gate/up pieces quantize independently as they
arrive, with no 16-bit copy of the whole model ever held.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from tessera.quant.int4_fit import fit_int4, levels, minmax_int4

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0
INT4_GROUP = 128
INT4_FITS = ("lsq", "minmax")
INT4_FIT = "lsq"  # how quantize_int4 fits a group's scale and offset (int4_fit.py)
KINDS = ("int8", "fp8", "int4")


class QuantizedWeight(NamedTuple):
    kind: str  # "int8" | "fp8" | "int4"
    data: torch.Tensor  # int8 [N, K] | float8_e4m3fn [N, K] | uint8 [N, K // 2]
    scale: torch.Tensor  # float32 [N] | grouped: [N, K // G] float16 or float32
    offset: Optional[torch.Tensor] = None  # int4: [N, K // G]; None otherwise
    group_size: int = 0  # int4, grouped int8: G; 0: per output channel

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def in_features(self) -> int:
        return self.in_features_of(self.data.shape[1])

    def in_features_of(self, data_columns: int) -> int:
        """K for data of this many columns (int4 packs two a byte)."""
        return data_columns * (2 if self.kind == "int4" else 1)


def _row_absmax(w: torch.Tensor) -> torch.Tensor:
    return w.float().abs().amax(dim=1)  # [N]


def _check_groups(k: int, group_size: int, kind: str) -> None:
    if k % group_size or k % 2:
        raise ValueError(f"{kind} in groups needs the input size ({k}) to be a multiple of "
                         f"the group size {group_size}")


def quantize_int8(w: torch.Tensor, group_size: int = 0,
                  scale_dtype: Optional[torch.dtype] = None) -> QuantizedWeight:
    """w [N, K] (any float dtype) -> int8 per output channel (group_size 0, float32
    scales) or per group of group_size along K (scales in scale_dtype, default w's)."""
    if not group_size:
        amax = _row_absmax(w)
        scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
        data = torch.round(w.float() / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX)
        return QuantizedWeight("int8", data.to(torch.int8), scale)
    n, k = w.shape
    _check_groups(k, group_size, "int8")
    groups = w.float().reshape(n, k // group_size, group_size)
    scale = (groups.abs().amax(-1) / INT8_MAX).to(scale_dtype or w.dtype)  # [N, K / G]
    s = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    data = torch.round(groups / s).clamp_(-INT8_MAX, INT8_MAX).reshape(n, k)
    return QuantizedWeight("int8", data.to(torch.int8), scale, None, group_size)


def quantize_fp8(w: torch.Tensor) -> QuantizedWeight:
    """w [N, K] -> float8 e4m3 per output channel (round to nearest, saturating)."""
    amax = _row_absmax(w)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    data = (w.float() / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return QuantizedWeight("fp8", data, scale)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] integers in [0, 15] -> uint8 [N, K / 2] (even columns in the low nibble)."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(data: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] -> uint8 [N, K] in [0, 15]."""
    low, high = data & 0xF, data >> 4
    return torch.stack([low, high], dim=-1).reshape(data.shape[0], -1)


def quantize_int4(w: torch.Tensor, group_size: int = INT4_GROUP,
                  scale_dtype: Optional[torch.dtype] = None,
                  fit: Optional[str] = None) -> QuantizedWeight:
    """w [N, K] -> int4 in groups of group_size along K, asymmetric: each group's scale and
    offset fitted by least squares (fit "lsq", quant/int4_fit.py) or from its minimum and
    maximum ("minmax"; default INT4_FIT), rounded to scale_dtype (default w's dtype); q
    rounded against the stored scale and offset, so what the kernel reads is what was
    fitted."""
    n, k = w.shape
    _check_groups(k, group_size, "int4")
    fit = fit or INT4_FIT
    if fit not in INT4_FITS:
        raise ValueError(f"unknown int4 fit {fit!r}; choose one of {', '.join(INT4_FITS)}")
    dtype = scale_dtype or w.dtype
    groups = w.float().reshape(n, k // group_size, group_size)
    scale, offset = (fit_int4 if fit == "lsq" else minmax_int4)(groups)  # [N, K / G]
    scale, offset = scale.to(dtype), offset.to(dtype)
    q = levels(groups, scale, offset)  # [N, K / G, G], against the stored scale and offset
    return QuantizedWeight("int4", pack_int4(q.reshape(n, k)), scale, offset, group_size)


def quantize(kind: str, w: torch.Tensor, group_size: int = 0,
             scale_dtype: Optional[torch.dtype] = None) -> QuantizedWeight:
    if kind == "int8":
        return quantize_int8(w, group_size, scale_dtype)
    if kind == "fp8":
        return quantize_fp8(w)
    if kind == "int4":
        return quantize_int4(w, group_size or INT4_GROUP, scale_dtype)
    raise ValueError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] matrix qw stands for, computed in float32, returned in dtype."""
    if not qw.group_size:
        return (qw.data.float() * qw.scale.float()[:, None]).to(dtype)
    q = (unpack_int4(qw.data) if qw.kind == "int4" else qw.data).float()
    n, k = q.shape
    g = qw.group_size
    w = q.reshape(n, k // g, g) * qw.scale.float()[..., None]
    if qw.offset is not None:
        w = w + qw.offset.float()[..., None]
    return w.reshape(n, k).to(dtype)


def expert_weight(w: torch.Tensor, scale: Optional[torch.Tensor], e: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """MoE expert e's [rows, K] matrix in dtype: w [E, rows, K] as it is, or int8 / fp8
    dequantized with its per-row scales [E, rows]."""
    if scale is None:
        return w[e]
    return (w[e].float() * scale[e].float()[:, None]).to(dtype)


def quant_linear_ref(x: torch.Tensor, qw: QuantizedWeight,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] @ dequantize(qw)^T (+ bias) -> [M, N]: float32 products and sums, rounded
    to x's dtype once at the end."""
    y = x.float() @ dequantize(qw).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
