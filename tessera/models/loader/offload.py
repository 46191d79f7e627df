"""Weight offload: which decoder layers leave the device, and their packing in a host store.

Objects: OffloadPlan (the offloaded layers, the bytes each moves), `plan_offload(layer_bytes,
budget)`, `streamed_params(layer)` (what travels: every parameter of the layer but its
norms, which a fused decode path reads one layer early), `layer_bytes(model)`, and
`place_in_store(model, plan, offload_dir, device)`, which makes the store (offload_store.py:
pinned CPU memory, or a file) and points the layers' parameters into it, and
`attach_stream(model, plan, store, device)`, which points them into the two device slots
and gives the model its WeightStream (layers/weight_stream.py).
Flow (models/loader/__init__.py): the model is built once on the meta device so that
`layer_bytes` can price each layer exactly (quantized formats included); `plan_offload`
spreads the offloaded layers evenly over the stage (the copy of one overlaps the compute
of those between) until the device memory freed, less the two slots, reaches the budget;
the real model is then built with those layers in CPU memory (LayerContext.home);
`place_in_store` points their parameters into the store before anything is written, so
loading (or random filling) writes there directly; `attach_stream` then points them into
the two device slots and starts the stream.
A layer that runs at two depths (`layer_share`) is never offloaded.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from tessera.layers.norm import RMSNorm
from tessera.layers.weight_stream import WeightStream
from tessera.models.loader.offload_store import ALIGN, GiB, FileStore, PinnedStore

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OffloadPlan:
    layers: list[int]  # global indices of the offloaded layers, in forward order
    nbytes: dict[int, int]  # packed bytes of each

    @property
    def slot_bytes(self) -> int:
        return max(self.nbytes.values())

    @property
    def stored_bytes(self) -> int:
        return sum(self.nbytes.values())

    @property
    def freed_bytes(self) -> int:
        """Device memory the plan frees: the layers, less the two slots they stream into."""
        return self.stored_bytes - 2 * self.slot_bytes


def streamed_params(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layer's parameters that live off the device: all but its RMSNorms'."""
    norms = {id(p) for m in layer.modules() if isinstance(m, RMSNorm) for p in m.parameters()}
    return [(n, p) for n, p in layer.named_parameters() if id(p) not in norms]


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def packed_bytes(layer: nn.Module) -> int:
    return sum(_aligned(p.numel() * p.element_size()) for _, p in streamed_params(layer))


def layer_bytes(model: nn.Module) -> dict[int, int]:
    """Packed bytes of each decoder layer of the stage that may be offloaded (a layer
    that runs under two indices may not)."""
    layers = model.decoder_layers()
    seen: dict[int, int] = {}
    for module in layers.values():
        seen[id(module)] = seen.get(id(module), 0) + 1
    return {i: packed_bytes(m) for i, m in layers.items() if seen[id(m)] == 1}


def spread(candidates: list[int], count: int) -> list[int]:
    """`count` of the candidate layers, evenly spaced among them."""
    step = len(candidates) / count
    return [candidates[int(k * step + step / 2)] for k in range(count)]


def plan_offload(nbytes: dict[int, int], budget_gb: float) -> OffloadPlan:
    """The fewest layers (an even number, at least four) whose offload frees at least
    budget_gb GiB of the device; a clear error when the layers cannot free that much."""
    budget = budget_gb * GiB
    candidates = sorted(nbytes)
    for count in range(4, len(candidates) + 1, 2):
        chosen = spread(candidates, count)
        plan = OffloadPlan(chosen, {i: nbytes[i] for i in chosen})
        if plan.freed_bytes >= budget:
            return plan
    most = len(candidates) - len(candidates) % 2
    best = (OffloadPlan(candidates[:most], {i: nbytes[i] for i in candidates[:most]})
            if most >= 4 else None)
    can = best.freed_bytes / GiB if best else 0.0
    raise ValueError(
        f"cpu_offload_gb {budget_gb:g} exceeds what offloading can free on this device: "
        f"{can:.2f} GiB ({len(candidates)} offloadable decoder layers of about "
        f"{max(nbytes.values(), default=0) / GiB:.2f} GiB, less the two that stay as "
        "streaming buffers; at least four layers are needed).")


def _layout(layer: nn.Module):
    """(name, parameter, offset in the layer's packing) of what travels."""
    at = 0
    for name, p in streamed_params(layer):
        yield name, p, at
        at += _aligned(p.numel() * p.element_size())


def place_in_store(model: nn.Module, plan: OffloadPlan, offload_dir,
                   device: torch.device):
    """Makes the store and points the planned layers' parameters (built in CPU memory,
    not yet written) into it, so that loading fills the store directly."""
    layers = model.decoder_layers()
    layout, offset = [], 0
    for i in plan.layers:
        layout.append((offset, plan.nbytes[i]))
        offset += plan.nbytes[i]
    store = (FileStore(offload_dir, layout, device) if offload_dir
             else PinnedStore(layout, device))
    for j, i in enumerate(plan.layers):
        packed = store.writable(j)  # [nbytes] uint8 on the host
        for name, p, at in _layout(layers[i]):
            if not p.is_contiguous():
                raise ValueError(f"layer {i}: parameter {name} is not contiguous")
            n = p.numel() * p.element_size()
            p.data = packed[at:at + n].view(p.dtype).view(p.shape)
    return store


def offloaded_param_ids(model: nn.Module, plan: OffloadPlan) -> set[int]:
    layers = model.decoder_layers()
    return {id(p) for i in plan.layers for _, p in streamed_params(layers[i])}


def attach_stream(model: nn.Module, plan: OffloadPlan, store,
                  device: torch.device) -> WeightStream:
    """Once loaded: points the planned layers' parameters into the two device slots and
    their norms onto the device, and sets `model.model.weight_stream`."""
    layers = model.decoder_layers()
    slots = [torch.empty(plan.slot_bytes, dtype=torch.uint8, device=device) for _ in range(2)]
    for j, i in enumerate(plan.layers):
        layer, packed = layers[i], store.writable(j)
        for name, p, at in _layout(layer):
            n = p.numel() * p.element_size()
            if p.data_ptr() != packed[at:].data_ptr():
                raise RuntimeError(f"layer {i}: loading moved parameter {name} out of the "
                                   "offload store")
            p.data = slots[j % 2][at:at + n].view(p.dtype).view(p.shape)
        for m in layer.modules():
            if isinstance(m, RMSNorm):
                m.to(device)
    del packed
    store.finish_loading()
    positions = {list(layers).index(i): j for j, i in enumerate(plan.layers)}
    stream = WeightStream(store, positions, slots, device)
    model.model.weight_stream = stream
    bw = stream.bandwidth
    logger.info("weight offload: %d of %d layers (%.2f GiB) in %s, streamed through two %.2f "
                "GiB slots: %.2f GiB of device memory freed%s", len(plan.layers),
                len(layers), plan.stored_bytes / GiB, store.describe(), plan.slot_bytes / GiB,
                plan.freed_bytes / GiB,
                f"; host-to-device {bw / 1e9:.1f} GB/s: a step's copies take >= "
                f"{plan.stored_bytes / bw * 1e3:.1f} ms" if bw else "")
    return stream
