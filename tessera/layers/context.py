"""What layers take from the engine when a model is built.

Objects: LayerContext (the ops, kernel or reference: layers/ops.py; the kernel switches;
`linear_method(prefix)`, the LinearMethod each linear layer computes with: the seam where
a quantization policy chooses per layer, quant/base.py), `make_context(KernelConfig,
device, QuantPolicy)` (quant_policy.py: a format per layer prefix), `building(ctx)` and
`current()`. `layer_names`: the prefixes the policy was asked about (quant_policy.py:
`check_patterns`). `home(i)`: where a model builds decoder layer i (CPU memory for a layer
weight offload streams in). The model loader builds the model inside
`with building(ctx):`; each layer keeps what it needs from `current()` in its __init__, so
nothing global is read while the model runs. Outside `building` (a layer made alone, in a
test), the default: reference ops and dense 16-bit linear layers.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Optional

import torch

from tessera.config import KernelConfig
from tessera.distributed.parallel_state import tp_size
from tessera.layers.ops import ReferenceOps, make_ops
from tessera.quant.base import LinearMethod
from tessera.quant_policy import QuantPolicy, parse_spec
from tessera.quant.unquantized import UnquantizedLinearMethod


@dataclasses.dataclass
class LayerContext:
    ops: ReferenceOps
    kernel: KernelConfig
    linear_method: Callable[[str], LinearMethod]  # layer prefix -> its method
    dense_method: LinearMethod  # 16-bit (the LM head's, unless the policy names it)
    device: torch.device
    quant_spec: Callable[[str], str] = lambda prefix: "none"  # prefix -> format (MoE experts)
    layer_names: list[str] = dataclasses.field(default_factory=list)  # asked of the policy
    offloaded: frozenset[int] = frozenset()  # decoder layers built in CPU memory (offload)

    def home(self, layer: int):
        """Where decoder layer `layer` is built: CPU memory for an offloaded one (its
        weights then move to their host store: models/loader/offload.py), else the
        device the model is built on."""
        return torch.device("cpu") if layer in self.offloaded else contextlib.nullcontext()

    def describe(self, dtype: torch.dtype) -> dict[str, str]:
        """The kernel paths a model of this dtype built here takes (as built, not as
        asked): the skinny GEMM "always", "on" (auto, where it applies) or "off", etc."""
        dense, kernels, on = self.dense_method, self.ops.kernels, {True: "on", False: "off"}
        skinny = dense.skinny_here and (dense.mode == "always"
                                        or dtype in (torch.bfloat16, torch.float16))
        moe = self.kernel.fused_moe
        pdl = False
        if kernels and self.ops.pdl:
            from tessera.kernels.pdl import pdl_active
            pdl = pdl_active(self.device)
        return {"ops": "triton" if kernels else "reference",
                "skinny_gemm": ("always" if dense.mode == "always" else "on") if skinny
                else "off",
                "qkv_rope": on[skinny and dense.qkv_rope and kernels],
                "norm_fusion": on[skinny and dense.norm_fusion and kernels
                                  and tp_size() == 1 and dtype != torch.float16],
                "fused_moe": moe if moe == "always" or (moe == "auto" and kernels) else "off",
                "pdl": on[pdl]}


def make_context(kernel: KernelConfig, device: torch.device,
                 policy: Optional[QuantPolicy] = None,
                 ops: Optional[ReferenceOps] = None) -> LayerContext:
    """The context a worker builds its model in; policy (quant_policy.py) picks each
    linear layer's format (default: every layer dense); ops: make_ops' (made here if
    not given)."""
    ops = ops or make_ops(kernel, device)
    dense = UnquantizedLinearMethod(kernel, ops, device)
    if policy is None or not policy.quantized:
        return LayerContext(ops, kernel, lambda prefix: dense, dense, device)
    from tessera.quant.quantized import QuantizedLinearMethod
    methods: dict[str, LinearMethod] = {"none": dense}
    for spec in sorted(policy.specs - {"none"}):
        kind, group = parse_spec(spec)
        methods[spec] = QuantizedLinearMethod(kind, group, kernel, ops, device)
    names: list[str] = []

    def spec_for(prefix: str) -> str:  # recording the names, for check_patterns
        names.append(prefix)
        return policy.spec_for(prefix)
    return LayerContext(ops, kernel, lambda prefix: methods[spec_for(prefix)], dense, device,
                        spec_for, names)


_current: Optional[LayerContext] = None


@contextlib.contextmanager
def building(ctx: LayerContext) -> Iterator[LayerContext]:
    global _current
    previous, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = previous


def current() -> LayerContext:
    if _current is not None:
        return _current
    return make_context(KernelConfig(kernel_backend="reference"), torch.device("cpu"))
