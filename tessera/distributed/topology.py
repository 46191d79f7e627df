"""Hardware awareness: how the GPUs of this host are linked, and a layout check.

`gpu_links()` reads the link between each pair of GPUs (NVML when the nvidia-ml-py
package is there, else `nvidia-smi topo -m`): "NVLink" or "PCIe"-class. `check_layout`
refuses impossible tensor-parallel layouts with a clear error (the engine core, before any
worker starts); `check_gpus` (each rank of a multi-GPU layout, before it takes its GPU)
checks the GPU count and, on rank 0, logs the links and warns when TP would span GPUs
without NVLink (all-reduces then cross PCIe: pipeline parallelism suits that better).
"""
from __future__ import annotations

import logging
import subprocess
from typing import Optional

logger = logging.getLogger(__name__)


def _links_from_nvml(count: int) -> Optional[dict[tuple[int, int], str]]:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return None
    links = {}
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        for i in range(count):
            for j in range(i + 1, count):
                status = pynvml.nvmlDeviceGetP2PStatus(handles[i], handles[j],
                                                       pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
                links[(i, j)] = "NVLink" if status == pynvml.NVML_P2P_STATUS_OK else "PCIe"
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()
    return links


def _links_from_smi(count: int) -> Optional[dict[tuple[int, int], str]]:
    try:
        text = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split() for line in text.splitlines() if line.startswith("GPU")]
    links = {}
    for i, row in enumerate(rows[:count]):
        for j in range(i + 1, min(count, len(row) - 1)):
            cell = row[j + 1]
            links[(i, j)] = "NVLink" if cell.startswith("NV") else f"PCIe ({cell})"
    return links or None


def gpu_links(count: int) -> dict[tuple[int, int], str]:
    return _links_from_nvml(count) or _links_from_smi(count) or {}


def check_layout(num_heads: int, num_kv_heads: int, intermediate: int, num_layers: int,
                 tp: int, pp: int = 1) -> None:
    """Refuses a TP/PP layout the model cannot take (ValueError naming the fix); no torch."""
    if num_heads % tp:
        raise ValueError(f"tensor_parallel_size {tp} does not divide the {num_heads} attention "
                         "heads; choose a divisor of the head count.")
    if intermediate % tp:
        raise ValueError(f"tensor_parallel_size {tp} does not divide the MLP width "
                         f"{intermediate}.")
    if num_kv_heads < tp and tp % num_kv_heads:
        raise ValueError(f"with {num_kv_heads} KV heads, tensor_parallel_size {tp} must be a "
                         "multiple of the KV head count (KV heads are then replicated).")
    if pp > num_layers:
        raise ValueError(f"pipeline_parallel_size {pp} exceeds the model's {num_layers} layers.")


def check_gpus(tp: int, pp: int = 1, log_links: bool = True) -> None:
    """On a GPU host, by every rank before it takes its GPU: enough GPUs for the layout;
    with log_links (rank 0), logs the links and warns when TP would cross PCIe."""
    import torch
    available = torch.cuda.device_count()
    if tp * pp > available:
        raise ValueError(f"tensor_parallel_size {tp} x pipeline_parallel_size {pp} needs "
                         f"{tp * pp} GPUs; this host has {available}.")
    if tp == 1 or not log_links:
        return
    links = gpu_links(tp)
    if links:
        logger.info("GPU links: %s", ", ".join(f"{i}-{j}: {k}" for (i, j), k in links.items()))
    if any(not kind.startswith("NVLink") for kind in links.values()):
        logger.warning("tensor parallelism over GPUs linked by PCIe: every layer's all-reduce "
                       "crosses it; pipeline parallelism (-pp) moves far less data there.")
