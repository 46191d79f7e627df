"""Many models on shared devices from a deployment file: `tessera serve --deployment FILE` (the
file `tessera plan` reads; planner/deployment.py).

Objects: ServedModel (a model's name and one (EngineConfig, environment) per device group it
was placed on) and `place_models(path, kwargs)`. Flow: load the file -> `plan`
(planner/plan.py: AlpaServe's greedy placement over the group layouts, with the simulator in
the loop) -> refused, with the plan's report, when nothing fits -> for each model, an engine
process per group holding it: the group's devices (CUDA_VISIBLE_DEVICES: group i is devices
i*size ... on a GPU host), the layout's TP x PP, the model's precision (the file's, or the
plan's choice for `precision: auto`; a 16-bit checkpoint quantized at load to int8 / fp8 /
int4; a GGUF file keeps its own) and its LM head's (lm_head_precision: the head quantized
too; else 16-bit, or as the checkpoint holds it), its KV cache's dtype, and its share of the
group's memory as the planner counted it (its weights plus an equal part of what the group's
weights leave for KV). The server then routes each request by its `model` to that model's
engines; a model on several groups is balanced over them as data-parallel replicas are
(engine/router.py). The command line's engine options apply to every model; the file sets,
per model, what differs.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from tessera.config import PARTS, EngineConfig
from tessera.engine.replicas import visible_gpus

logger = logging.getLogger(__name__)
QUANTIZATION = {"bfloat16": None, "float16": None, "int8": "int8", "fp8": "fp8",
                "int4": "int4"}
PER_MODEL = ("model", "tensor_parallel_size", "pipeline_parallel_size", "quantization",
             "lm_head_quantization", "kv_cache_dtype", "gpu_memory_utilization", "load_format",
             "data_parallel_size")


_DEFAULTS = {f.name: f.default for _, cls in PARTS for f in dataclasses.fields(cls)
             if f.name in PER_MODEL}


@dataclasses.dataclass
class ServedModel:
    """A model the server serves: its API names, its config, and, from a deployment file,
    an (EngineConfig, environment) per device group (None: the config's own replicas)."""
    names: list[str]
    config: EngineConfig
    placements: Optional[list[tuple[EngineConfig, dict[str, str]]]] = None


def place_models(path: str, kwargs: dict[str, Any]) -> tuple[list[ServedModel], str]:
    """The models as the plan places them, and the plan's report (logged by the caller)."""
    given = sorted(k for k in PER_MODEL if kwargs.get(k, _DEFAULTS[k]) != _DEFAULTS[k])
    if given:
        raise ValueError(f"--deployment sets {', '.join(given)} per model (the plan "
                         f"chooses them); leave them off the command line.")
    from tessera.planner.deployment import load_deployment
    from tessera.planner.plan import plan, render
    d = load_deployment(path)
    report = plan(d)
    text = render(report)
    if report.best is None:
        raise ValueError(f"{path}: no placement fits these devices:\n{text}")
    gpus = visible_gpus() if kwargs.get("device") != "cpu" else []
    if gpus and len(gpus) < d.hardware.count:
        raise ValueError(f"{path} places models on {d.hardware.count} devices; this host "
                         f"has {len(gpus)} GPUs.")
    return _served(report.deployment, report.best, kwargs, gpus), text


def _served(d, p, kwargs: dict[str, Any], gpus: list[str]) -> list[ServedModel]:
    """d: the Deployment as planned (`precision: auto` resolved), p: its best Placement."""
    from tessera.planner.hardware import GiB
    specs = {m.name: m for m in d.models}
    size = p.layout.group_size
    out: dict[str, ServedModel] = {}
    for i, names in enumerate(p.groups):
        if not names:
            continue
        env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * size:(i + 1) * size])} if gpus else {}
        weights = sum(specs[n].weight_bytes for n in names)
        left = size * d.hardware.usable_bytes - weights
        for name in names:
            m = specs[name]
            per_device = (m.weight_bytes + left / len(names)) / size
            share = min(1.0, per_device / (d.hardware.memory_gib * GiB))
            config = EngineConfig.from_kwargs(**{
                **kwargs, "model": m.source, "tensor_parallel_size": p.layout.tp,
                "pipeline_parallel_size": p.layout.pp,
                "quantization": None if m.source.endswith(".gguf") else QUANTIZATION[m.precision],
                "lm_head_quantization": m.lm_head, "kv_cache_dtype": m.kv_cache_dtype,
                "gpu_memory_utilization": share,
                **({"load_format": "dummy"} if _named_shape(m.source) else {})})
            served = out.setdefault(name, ServedModel([name], config, []))
            served.placements.append((config, env))
    return [out[m.name] for m in d.models if m.name in out]


def _named_shape(source: str) -> bool:
    from tessera.models.shapes import NAMED_SHAPES
    return source.lower().removeprefix("dummy:") in NAMED_SHAPES
