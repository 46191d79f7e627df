"""Memory accounting of one worker: where the weights are, what the KV cache and the
CUDA graphs take, and the allocator's reserved against allocated bytes.

Objects: `device_weight_bytes(model, device)` (the parameters' distinct storages on the
device: weights stored once count once, offloaded layers only as their two slots),
`setup_memory(runner)` -> {name: bytes} for WorkerInfo (the start-up log and /metrics),
`allocator_memory(device)` -> the caching allocator's reserved / allocated bytes now (the
runner sends them with a step's output about once a second: /metrics follows them),
(engine/protocol.py `WorkerInfo.describe_memory` words them for the start-up log).
Keys: weights_device, weights_cpu (an offload store: pinned memory or a file's read
buffers), weights_disk, weights_deduplicated (bytes saved), kv_cache, kv_cache_host (the
KV host tier's pinned blocks), cuda_graphs,
allocator_reserved, allocator_allocated; with offload also offload_step_bytes (a step
moves) and offload_bytes_per_s (measured host-to-device rate; disk_read_bytes_per_s for
a file).
"""
from __future__ import annotations

import torch
from torch import nn

GiB = 2**30


def device_weight_bytes(model: nn.Module, device: torch.device) -> int:
    storages: dict[int, int] = {}
    for p in model.parameters():
        if p.device.type == device.type:
            s = p.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def allocator_memory(device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {}
    return {"allocator_reserved": torch.cuda.memory_reserved(device),
            "allocator_allocated": torch.cuda.memory_allocated(device)}


def setup_memory(runner) -> dict[str, int]:
    model, device = runner.model, runner.device
    out = {"weights_device": device_weight_bytes(model, device),
           "weights_deduplicated": getattr(model, "dedup_saved_bytes", 0),
           "kv_cache": sum(t.numel() * t.element_size() for t in runner.kv_caches)}
    if runner.kv_host is not None:
        out["kv_cache_host"] = runner.kv_host.store.numel()
    if device.type == "cuda":
        out["cuda_graphs"] = runner.graph_bytes
    stream = runner.weight_stream
    if stream is not None:
        store = stream.store
        out.update(weights_cpu=store.host_bytes, weights_disk=store.disk_bytes,
                   offload_step_bytes=stream.bytes_per_step)
        if stream.bandwidth:
            out["offload_bytes_per_s"] = int(stream.bandwidth)
        disk = getattr(store, "read_bandwidth", None)
        if disk:
            out["disk_read_bytes_per_s"] = int(disk)
    out.update(allocator_memory(device))
    return out
