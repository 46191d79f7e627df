"""Memory accounting of one worker: where the weights are, what the KV cache and the
CUDA graphs take, and the allocator's reserved against allocated bytes.

Objects: `device_weight_bytes(model, device)` (the parameters' distinct storages on the
device: weights stored once count once, offloaded layers only as their two slots),
`setup_memory(runner)` -> {name: bytes} for WorkerInfo (the start-up log and /metrics),
`allocator_memory(device)` -> the caching allocator's reserved / allocated bytes now (the
runner sends them with a step's output about once a second: /metrics follows them),
`kv_blocks_that_fit(runner)` (the KV cache's size: on the GPU a share of its memory after
a forward pass of a full token budget measured the activations' peak; on the CPU
`cpu_kv_cache_gb`),
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


def kv_blocks_that_fit(runner) -> int:
    """The KV blocks (runner.bytes_per_block each) the runner's device has room for."""
    cache = runner.config.cache
    if runner.device.type != "cuda":
        return max(1, int(cache.cpu_kv_cache_gb * GiB) // runner.bytes_per_block)
    device = runner.device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    tokens = min(runner.config.scheduler.max_num_batched_tokens,
                 runner.arch.max_position_embeddings - 1)
    runner.run_prompt([0] * tokens)  # the activations' peak of a full step
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    # memory held before this engine started is not its own: its share
    # (gpu_memory_utilization) is of the total, less what it itself uses
    non_torch = max(0, total - free - torch.cuda.memory_reserved(device) - runner.used_at_start)
    budget = total * cache.gpu_memory_utilization - peak - non_torch
    if runner.used_at_start > 2**31:  # other engines share the GPU: at most what is free
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = min(budget, free + cached - 2**28)
    if budget < runner.bytes_per_block:
        raise RuntimeError(
            f"no GPU memory left for the KV cache (weights {runner.weight_bytes / GiB:.1f} GiB,"
            f" peak {peak / GiB:.1f} GiB of {total / GiB:.1f} GiB); raise "
            "gpu_memory_utilization or lower max_num_batched_tokens.")
    return int(budget // runner.bytes_per_block)
