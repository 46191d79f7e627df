"""Quantized Hugging Face checkpoints: a layer's parts gathered into one QuantizedWeight.

Objects: `assemble(weights, method)` wraps a checkpoint's (name, tensor) stream and yields
("<module>.weight", QuantizedWeight) once a quantized layer's parts are all in (other
tensors pass through); `gptq_to_int4(qweight, qzeros, scales, group, zero_offset)`.
- fp8 (quant_method fp8 / fbgemm_fp8 / compressed-tensors): `weight` (float8_e4m3fn
  [N, K], kept a lazy slice so a TP rank reads only its part) + `weight_scale` ([N],
  [N, 1], or one per-tensor value, broadcast) -> fp8 per channel. `input_scale` (static
  activation scales) is not used: activations are scaled per token, dynamically.
- gptq (4-bit): `qweight` int32 [K / 8, N] (eight 4-bit values along K per int32, the
  lowest bits first), `qzeros` int32 [K / G, N / 8] (along N), `scales` fp16 [K / G, N],
  `g_idx` (must be the trivial k // G: act-order is refused) -> int4 with w = scale *
  (q - z): offset = -z * scale. AutoGPTQ's original format stores z - 1
  (checkpoint_format "gptq"); "gptq_v2" stores z.
A layer still missing a part when the stream ends is an error naming the layer and the
part ("has weight but no weight_scale").
"""
from __future__ import annotations

from typing import Iterator

import torch

from tessera.models.weight_utils import materialize, shape_of
from tessera.quant.formats import QuantizedWeight, pack_int4

_PARTS = {"fp8": ("weight", "weight_scale"), "gptq": ("qweight", "qzeros", "scales")}
_EXTRA = {"fp8": ("input_scale",), "gptq": ("g_idx",)}


def _is_fp8(tensor) -> bool:
    if isinstance(tensor, torch.Tensor):
        return tensor.dtype == torch.float8_e4m3fn
    return tensor.get_dtype() in ("F8_E4M3", "float8_e4m3fn")


def _unpack_int32(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 holding eight 4-bit values (lowest bits first) -> the values along dim, x8."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    if dim == 0:  # [R, C] -> [R * 8, C]
        values = (packed[:, None, :] >> shifts[None, :, None]) & 0xF
        return values.reshape(-1, packed.shape[1])
    values = (packed[:, :, None] >> shifts[None, None, :]) & 0xF  # [R, C, 8]
    return values.reshape(packed.shape[0], -1)


def gptq_to_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group: int, zero_offset: int = 1) -> QuantizedWeight:
    """GPTQ's layout -> Tessera's int4 [N, K] (zero_offset: 1 where z - 1 is stored)."""
    q = _unpack_int32(qweight, 0).t()  # [N, K]
    z = (_unpack_int32(qzeros, 1) + zero_offset).t().float()  # [N, K / G]
    s = scales.t().contiguous()  # [N, K / G]
    return QuantizedWeight("int4", pack_int4(q), s, (-z * s.float()).to(s.dtype), group)


def _fp8_weight(module: str, parts: dict) -> QuantizedWeight:
    data, scale = parts["weight"], materialize(parts["weight_scale"]).float().flatten()
    n = shape_of(data)[0]
    if scale.numel() == 1:
        scale = scale.expand(n).contiguous()  # one scale for the tensor
    if scale.numel() != n:
        raise ValueError(f"{module}: weight_scale has {scale.numel()} values for {n} output "
                         f"rows (per-channel or per-tensor scales are supported)")
    return QuantizedWeight("fp8", data, scale)


def _gptq_weight(module: str, parts: dict, group: int, zero_offset: int) -> QuantizedWeight:
    qweight, qzeros, scales = (materialize(parts[p]) for p in _PARTS["gptq"])
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if tuple(scales.shape) != (k // group, n):
        raise ValueError(f"{module}: scales of shape {tuple(scales.shape)} do not fit a "
                         f"[{k}, {n}] weight in groups of {group}")
    g_idx = parts.get("g_idx")
    if g_idx is not None and not torch.equal(materialize(g_idx).long(),
                                             torch.arange(k) // group):
        raise ValueError(f"{module}: g_idx is not in order (act-order GPTQ is not supported)")
    return gptq_to_int4(qweight, qzeros, scales, group, zero_offset)


def assemble(weights: Iterator[tuple[str, object]], method: str, group: int = 128,
             zero_offset: int = 1) -> Iterator[tuple[str, object]]:
    """The stream with each quantized layer's parts replaced by one QuantizedWeight."""
    needed, extra = _PARTS[method], _EXTRA[method]
    pending: dict[str, dict] = {}
    for name, tensor in weights:
        module, _, part = name.rpartition(".")
        if part in extra:
            if part == "g_idx":
                pending.setdefault(module, {})[part] = tensor
            continue
        if part not in needed or (method == "fp8" and part == "weight"
                                  and not _is_fp8(tensor)):
            yield name, tensor
            continue
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if all(p in parts for p in needed):
            del pending[module]
            yield f"{module}.weight", (_fp8_weight(module, parts) if method == "fp8"
                                       else _gptq_weight(module, parts, group, zero_offset))
    for module, parts in pending.items():
        have = [p for p in needed if p in parts]
        if have:
            missing = [p for p in needed if p not in parts]
            raise ValueError(f"{module}: the checkpoint has {', '.join(have)} but no "
                             f"{', '.join(missing)}")
