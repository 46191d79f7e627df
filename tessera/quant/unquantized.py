"""The dense 16-bit (or float32) linear method: the weight as one [out, in] tensor.

`apply` runs the skinny GEMM (kernels/skinny_gemm.py: it reads the weight once, faster
than cuBLAS at that size) for products of at most 16 rows where the switch allows it, and
cuBLAS (F.linear) otherwise. KernelConfig.skinny_gemm: "auto" on a Hopper-class NVIDIA GPU
(where it was tuned) in bf16/fp16 with kernel ops, "always" on any device and dtype (on
the CPU under TRITON_INTERPRET=1, as the tests run it), "off". Where the skinny GEMM runs,
its epilogues serve the fused decode paths: the gated MLP's SiLU-and-mul; with qkv_rope,
rotary and the KV-cache write after q/k/v (with kernel ops: the attention after it reads
the kernel's cache layout); with norm_fusion, the RMSNorms between projections (one
tensor-parallel rank: the o and down products must be whole before the residual add; not
in float16, where g * s, rounded before the 1/rms scale, could overflow).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config import KernelConfig
from tessera.distributed.parallel_state import tp_size
from tessera.kernels.hardware import nvidia_sm90_or_later
from tessera.quant.base import LinearMethod


class UnquantizedLinearMethod(LinearMethod):
    def __init__(self, kernel: KernelConfig, ops, device: torch.device):
        self.ops, self.pdl = ops, kernel.pdl
        self.mode, self.qkv_rope, self.norm_fusion = (kernel.skinny_gemm, kernel.qkv_rope,
                                                      kernel.norm_fusion)
        self.skinny_here = self.mode == "always" or (
            self.mode == "auto" and ops.kernels and nvidia_sm90_or_later(device))
        self.kernels = None  # kernels/skinny_gemm.py, imported where it may run
        if self.skinny_here:
            from tessera.kernels import skinny_gemm
            self.kernels = skinny_gemm

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool) -> None:
        layer.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        layer.weight.weight_loader = layer.weight_loader
        if bias:
            layer.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            layer.bias.weight_loader = layer.weight_loader
        else:
            layer.register_parameter("bias", None)

    def kernel_weight(self, layer: nn.Module):
        """What the kernels take as W: the [out, in] tensor here (a QuantizedWeight in
        quantized methods)."""
        return layer.weight

    def weight_fits(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return layer.weight.dtype == x.dtype and 0 not in layer.weight.shape

    def skinny(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """Whether x [T, in] @ W^T takes the skinny GEMM."""
        if (not self.skinny_here or x.dim() != 2 or not 0 < x.shape[0] <= self.kernels.MAX_ROWS
                or not self.weight_fits(layer, x)):
            return False
        return self.mode == "always" or x.dtype in (torch.bfloat16, torch.float16)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.skinny(layer, x):
            return self.kernels.skinny_gemm(x, self.kernel_weight(layer), layer.bias,
                                            pdl=self.pdl)
        return self.apply_many(layer, x)

    def apply_many(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The product where the skinny GEMM does not run."""
        return F.linear(x, layer.weight, layer.bias)

    def fuses_gated(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return layer.bias is None and self.skinny(layer, x)

    def apply_gated(self, layer, x, pending=None, eps=0.0):
        return self.kernels.skinny_gemm(
            x, self.kernel_weight(layer), gated=True, norm_parts=None if pending is None else pending.parts,
            eps=eps, pdl=self.pdl)

    def fuses_rope(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return self.qkv_rope and self.ops.kernels and self.skinny(layer, x)

    def apply_qkv_rope(self, layer, x, positions, cos_sin, kv_cache, slot_mapping, num_heads,
                       num_kv_heads, pending=None, eps=0.0):
        return self.kernels.skinny_qkv_rope(
            x, self.kernel_weight(layer), layer.bias, positions, cos_sin, kv_cache, slot_mapping, num_heads,
            num_kv_heads, norm_parts=None if pending is None else pending.parts, eps=eps,
            pdl=self.pdl)  # [T, Hq, D]

    def fuses_norms(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return (self.norm_fusion and tp_size() == 1 and x.dtype != torch.float16
                and self.fuses_rope(layer, x))

    def apply_add_norm(self, layer, x, residual, norm_weight):
        return self.kernels.skinny_gemm_add_norm(x, self.kernel_weight(layer), layer.bias, residual,
                                                 norm_weight, pdl=self.pdl)
