"""Quantized linear methods: int8, fp8 and int4 weights, quantized as they load.

Objects: QuantizedLinearMethod(kind, group_size, kernel, ops, device) (one per format,
shared by every layer of that format), `check_quantization_device(kind, device)`.
The formats are quant/formats.py's. A layer holds `weight` (the quantized data: int8 or
float8_e4m3fn [N, K], or uint8 [N, K / 2] for int4), `weight_scale` (float32 [N]; with a
group size G, as int4 always has: [N, K / G], float16 in a 16-bit model, else float32)
and, for int4, `weight_offset` [N, K / G]. The
scales are marked `derived` (filled with the weight, not read from the checkpoint).

Flow: the layer's loader slices a checkpoint piece for its rows (a TP shard, the q / k /
v or gate / up part) and calls `store`, which quantizes that piece on the layer's device
and writes its rows of data and scales (a piece already in this format, from a quantized
checkpoint, is copied as it is; one in another format is dequantized and re-quantized)
(quantization is row-local, so the pieces quantize independently, ROWS_AT_ONCE rows at a
time, and no 16-bit copy of the model is ever held). `apply` computes:
- up to 16 rows (decode) where the skinny GEMM runs: kernels/skinny_gemm.py, which takes
  the QuantizedWeight and dequantizes in registers (fp8 with its FP8_ACTIVATIONS knob:
  x quantized to fp8 in the kernel, kernels/skinny_a8.py), with every epilogue of the dense path
  (gated SiLU-and-mul, rotary + KV write, residual add + pending norm), inherited from
  UnquantizedLinearMethod through `kernel_weight`; except int4 at up to 8 rows on NVIDIA
  GPUs, every mode but the fp8 ones: kernels/int4_gemv.py, a CUDA kernel compiled by
  NVRTC, where its `why_not` (`rope_why_not`) is None;
- more rows with kernel ops: fp8 on GPUs of compute capability 8.9+ quantizes the
  activations per token and multiplies fp8 by fp8 (W8A8, quant/fp8.py: kernels/fp8_gemm.py
  up to 128 rows, torch._scaled_mm above); otherwise
  kernels/quant_gemm.py (weight-only, dequantized in registers);
- without kernels (the CPU): the reference, x @ dequantize(W)^T (quant/formats.py); with
  EMULATE_W8A8 (a measurement knob) an fp8 layer's x quantized per token first.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config import KernelConfig
from tessera.models.weight_utils import dense, materialize, narrow
from tessera.quant.base import layer_name
from tessera.quant.formats import QuantizedWeight, dequantize, quantize
from tessera.quant.unquantized import UnquantizedLinearMethod

DATA_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "int4": torch.uint8}
ROWS_AT_ONCE = 4096  # rows quantized at a time (loaded or random): no whole float copy
# Measurement knob (benchmarks/quant_accuracy.py's "fp8a8"): where fp8 layers run without
# the fp8 MMA (the CPU), their inputs are quantized per token as W8A8's are (quant/fp8.py)
# and dequantized before the product, so W8A8's accuracy is measured where it cannot run;
# None: off; 0: per token; G: per token and group of G columns (finer scales)
EMULATE_W8A8: Optional[int] = None


def check_quantization_device(kind: str, device: torch.device) -> None:
    """A clear error where the device cannot run the format."""
    if kind == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise ValueError("fp8 weights need an NVIDIA GPU of compute capability 8.0 or later "
                         "(fp8 activations: 8.9); use int8 or int4.")


class QuantizedLinearMethod(UnquantizedLinearMethod):
    def __init__(self, kind: str, group_size: int, kernel: KernelConfig, ops,
                 device: torch.device):
        super().__init__(kernel, ops, device)
        check_quantization_device(kind, device)
        self.kind, self.group_size = kind, group_size
        # the kernels take powers of two from 16 as groups (kernels/quant_tiles.py)
        self.kernel_format = not group_size or (group_size >= 16
                                                and not group_size & (group_size - 1))
        self.gemm = None  # kernels/quant_gemm.py where kernels run
        if ops.kernels:
            from tessera.kernels import quant_gemm
            self.gemm = quant_gemm
        self.int4_gemv = None  # kernels/int4_gemv.py (CUDA) for decode products
        if self.skinny_here and device.type == "cuda":  # the formats it takes: its knob
            from tessera.kernels import int4_gemv
            self.int4_gemv = int4_gemv
        self.w8a8 = False
        if kind == "fp8" and ops.kernels and device.type == "cuda":
            from tessera.quant.fp8 import w8a8_supported
            self.w8a8 = w8a8_supported(device)

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        group = self.group_size
        if self.kind == "int4" and not group:
            raise ValueError(f"{layer_name(layer)}: int4 needs a group size")
        if group and in_features % group:
            raise ValueError(f"{layer_name(layer)}: {self.kind} needs the input size ({in_features} "
                             f"on this rank) to be a multiple of the group size {group}: choose "
                             f"a --quantization-group-size that divides it, keep the layer "
                             f"16-bit (--keep-full-precision) or choose another method.")
        cols = in_features // 2 if self.kind == "int4" else in_features
        layer.weight = nn.Parameter(torch.empty(out_features, cols, dtype=DATA_DTYPES[self.kind]),
                                    requires_grad=False)
        layer.weight.weight_loader = layer.weight_loader
        if group:  # fp16 scales in a 16-bit model: GGUF's exactly, and more bits than bf16
            scales = (out_features, in_features // group)
            dtype = torch.float32 if torch.get_default_dtype() == torch.float32 else torch.float16
            layer.weight_scale = nn.Parameter(torch.empty(scales, dtype=dtype),
                                              requires_grad=False)
        else:
            layer.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32),
                                              requires_grad=False)
        if self.kind == "int4":
            layer.weight_offset = nn.Parameter(torch.empty(scales, dtype=dtype),
                                               requires_grad=False)
            layer.weight_offset.derived = True
        else:
            layer.register_parameter("weight_offset", None)
        layer.weight_scale.derived = True
        if bias:
            layer.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            layer.bias.weight_loader = layer.weight_loader
        else:
            layer.register_parameter("bias", None)

    def logical_shape(self, layer: nn.Module, param: torch.Tensor) -> tuple[int, ...]:
        if param is layer.weight and self.kind == "int4":
            return (param.shape[0], param.shape[1] * 2)
        return tuple(param.shape)

    def store(self, layer, param, row_offset, rows, loaded, what=""):
        if param is not layer.weight:
            return super().store(layer, param, row_offset, rows, loaded, what)
        self.check_piece(layer, param, rows, loaded, what)
        piece = materialize(loaded)
        if isinstance(piece, QuantizedWeight) and (piece.kind, piece.group_size) == (
                self.kind, self.group_size):
            self._copy_rows(layer, row_offset, piece)  # the checkpoint's own format, as it is
        else:  # 16-bit, or another format: (dequantized and) quantized to this one
            for first in range(0, rows, ROWS_AT_ONCE):
                count = min(ROWS_AT_ONCE, rows - first)
                w = dense(narrow(piece, 0, first, count)).to(param.device)
                self._store_rows(layer, row_offset + first, w)

    def _store_rows(self, layer: nn.Module, row_offset: int, w: torch.Tensor) -> None:
        """Quantize w [rows, K] into rows [row_offset, row_offset + rows) of the layer."""
        self._copy_rows(layer, row_offset,
                        quantize(self.kind, w, self.group_size, layer.weight_scale.dtype))

    def _copy_rows(self, layer: nn.Module, row_offset: int, qw: QuantizedWeight) -> None:
        rows = qw.data.shape[0]
        layer.weight.data.narrow(0, row_offset, rows).copy_(qw.data)
        layer.weight_scale.data.narrow(0, row_offset, rows).copy_(qw.scale)
        if qw.offset is not None:
            layer.weight_offset.data.narrow(0, row_offset, rows).copy_(qw.offset)

    def fill_random(self, layer: nn.Module, generator: torch.Generator) -> None:
        """N(0, 0.02) weights, made ROWS_AT_ONCE rows at a time and quantized."""
        n, k = self.logical_shape(layer, layer.weight)
        for start in range(0, n, ROWS_AT_ONCE):
            rows = min(ROWS_AT_ONCE, n - start)
            w = torch.empty(rows, k, device=layer.weight.device,
                            dtype=layer.weight_scale.dtype if self.group_size
                            else torch.get_default_dtype())
            self._store_rows(layer, start, w.normal_(0.0, 0.02, generator=generator))
        if layer.bias is not None:
            layer.bias.data.zero_()

    def precision(self, layer: nn.Module) -> str:
        return self.kind

    def kernel_weight(self, layer: nn.Module) -> QuantizedWeight:
        return QuantizedWeight(self.kind, layer.weight, layer.weight_scale, layer.weight_offset,
                               self.group_size)

    def weight_fits(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return self.kernel_format and 0 not in layer.weight.shape and x.dtype in (torch.float32, torch.float16,
                                                           torch.bfloat16)

    def apply_many(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        qw = self.kernel_weight(layer)
        if self.w8a8:
            from tessera.quant.fp8 import w8a8_fits, w8a8_linear
            if w8a8_fits(x, qw):
                return w8a8_linear(x, qw, layer.bias, pdl=self.pdl)
        if self.gemm is not None and self.kernel_format and x.dim() == 2 and x.shape[0] > 0:
            return self.gemm.quant_gemm(x, qw, layer.bias)
        if EMULATE_W8A8 is not None and self.kind == "fp8" and x.numel():
            from tessera.quant.fp8 import fake_quantize_activations
            x = fake_quantize_activations(x, EMULATE_W8A8)
        return F.linear(x, dequantize(qw, x.dtype), layer.bias)  # [T, out]

    def _cuda_gemv(self, layer: nn.Module, x: torch.Tensor, why_not=None
                   ) -> Optional[QuantizedWeight]:
        """The layer's weight where kernels/int4_gemv.py takes x @ W^T (why_not(x, W), by
        default its plain product's `why_not`, is None), else None (the Triton skinny
        GEMM's, inherited)."""
        if self.int4_gemv is None or not self.skinny(layer, x):
            return None
        qw = self.kernel_weight(layer)
        return qw if (why_not or self.int4_gemv.why_not)(x, qw) is None else None

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        qw = self._cuda_gemv(layer, x)
        if qw is None:
            return super().apply(layer, x)
        return self.int4_gemv.int4_gemv(x, qw, layer.bias, pdl=self.pdl)

    def apply_gated(self, layer, x, pending=None, eps=0.0):
        qw = self._cuda_gemv(layer, x, lambda x, w: self.int4_gemv.why_not(x, w, gated=True))
        if qw is None:
            return super().apply_gated(layer, x, pending, eps)
        return self.int4_gemv.int4_gemv(x, qw, gated=True, eps=eps, pdl=self.pdl,
                                        norm_parts=None if pending is None else pending.parts)

    def apply_qkv_rope(self, layer, x, positions, cos_sin, kv_cache, slot_mapping, num_heads,
                       num_kv_heads, pending=None, eps=0.0):
        qw = self._cuda_gemv(layer, x, lambda x, w: self.int4_gemv.rope_why_not(
            x, w, positions, cos_sin, kv_cache, slot_mapping, num_heads, num_kv_heads))
        if qw is None:
            return super().apply_qkv_rope(layer, x, positions, cos_sin, kv_cache, slot_mapping,
                                          num_heads, num_kv_heads, pending, eps)
        return self.int4_gemv.int4_gemv_qkv_rope(
            x, qw, layer.bias, positions, cos_sin, kv_cache, slot_mapping, num_heads,
            num_kv_heads, norm_parts=None if pending is None else pending.parts, eps=eps,
            pdl=self.pdl)

    def apply_add_norm(self, layer, x, residual, norm_weight):
        qw = self._cuda_gemv(layer, x)
        if qw is None:
            return super().apply_add_norm(layer, x, residual, norm_weight)
        return self.int4_gemv.int4_gemv_add_norm(x, qw, layer.bias, residual, norm_weight,
                                                 pdl=self.pdl)
