"""A deployment file: the models to serve, their traffic and SLOs, and the hardware.

Objects: ModelSpec (a name, its shape: a named shape or a Hugging Face folder, precision
and the LM head's (planner/weights.py counts their bytes), the precisions the planner may
choose among (`precision: auto`: planner/precision.py), the KV cache's dtype, traffic:
rate and burstiness or a trace, lengths, SLO, an optional latency profile) and
Deployment (models, hardware, simulated duration, the group sizes to try, the attainment
to reach, the objective among plans that reach it), read by `load_deployment(path)` from
YAML or JSON. Every mistake is a ValueError that names the field: an unknown model or
preset, a model bigger than the devices, an SLO below what one step takes.

    hardware: {preset: h200, count: 8, price_per_hour: 3.5, memory_price_per_gb_hour: 0.001}
    duration: 60            # seconds of traffic simulated (default 60)
    target_attainment: 0.99
    objective: cost         # among plans reaching it: the cheapest (default), or accuracy
    models:
      - name: chat
        model: llama-3-8b   # a named shape, a folder with config.json, or a .gguf file
        precision: bfloat16 # or int8, fp8, int4; or auto: the planner chooses among
        precisions: [bfloat16, int8, fp8]  # (auto's candidates; this is the default)
        lm_head_precision: int8  # optional: the LM head quantized too (default 16-bit)
        kv_cache_dtype: fp8 # optional: a KV cache of a byte a value (default auto: 16-bit)
        rate: 4             # requests per second
        cv: 3               # burstiness (1: Poisson)
        prompt_len: [128, 1024]
        output_len: 128
        slo: {ttft: 0.5, tpot: 0.05}   # seconds; e2e too
        profile: llama-3-8b-h200.json  # `tessera bench profile`; none: the roofline
    trace: requests.jsonl   # instead of rates (time, model, prompt_len, output_len)
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from tessera.config import KV_CACHE_DTYPES
from tessera.models.arch_config import ArchConfig
from tessera.planner.hardware import Hardware, hardware
from tessera.planner.simulator import SLO
from tessera.planner.traffic import Lengths
from tessera.planner.weights import (DEFAULT_CANDIDATES, HEAD_PRECISIONS, PRECISIONS,
                                     ModelBytes, by_accuracy)



@dataclasses.dataclass
class ModelSpec:
    name: str
    arch: ArchConfig
    precision: str
    rate: float
    cv: float
    lengths: Lengths
    slo: SLO
    profile: Optional[str] = None
    source: str = ""  # the `model` field: a named shape or a folder (what is served)
    lm_head: Optional[str] = None  # the LM head's precision (None: 16-bit)
    kv_cache_dtype: str = "auto"  # the engine's --kv-cache-dtype: auto (16-bit) or fp8
    # `precision: auto`: the precisions the planner may choose among (precision is the
    # one being tried, at first the most precise); () where the file names one
    candidates: tuple[str, ...] = ()

    @property
    def bytes(self) -> ModelBytes:
        return ModelBytes(self.arch, self.precision, self.lm_head)

    @property
    def weight_bytes(self) -> float:
        return self.bytes.stored

    @property
    def kv_itemsize(self) -> int:
        return 2 if self.kv_cache_dtype == "auto" else 1

    @property
    def kv_bytes_per_token(self) -> int:
        return self.arch.kv_bytes_per_token * self.kv_itemsize

    @property
    def max_len(self) -> int:
        return self.lengths.prompt[1] + self.lengths.output[1]


@dataclasses.dataclass
class Deployment:
    models: list[ModelSpec]
    hardware: Hardware
    duration: float = 60.0
    target_attainment: float = 0.99
    group_sizes: Optional[list[int]] = None
    trace: Optional[str] = None
    seed: int = 0
    objective: str = "cost"  # planner/precision.py: cost or accuracy


def _arch(name: str, where: str) -> ArchConfig:
    from tessera.models.shapes import NAMED_SHAPES, named_shape
    if name.lower().removeprefix("dummy:") in NAMED_SHAPES:
        return named_shape(name)
    if name.endswith(".gguf") and os.path.isfile(name):
        from tessera.config import ModelConfig
        from tessera.models.source import resolve_source
        return resolve_source(ModelConfig(model=name)).arch
    config = os.path.join(name, "config.json")
    if os.path.isfile(config):
        from tessera.models.registry import from_hf_dict
        with open(config) as f:
            return from_hf_dict(json.load(f))
    raise ValueError(f"{where}: unknown model {name!r}: not a named shape "
                     f"({', '.join(NAMED_SHAPES)}), a folder with a config.json nor a .gguf file")


def _model(d: dict[str, Any], i: int, has_trace: bool) -> ModelSpec:
    where = f"models[{i}]"
    if not isinstance(d, dict) or "name" not in d or "model" not in d:
        raise ValueError(f"{where}: each model needs a name and a model (shape or folder)")
    where = f"model {d['name']!r}"
    known = {"name", "model", "precision", "precisions", "lm_head_precision", "kv_cache_dtype",
             "rate", "cv", "prompt_len", "output_len", "slo", "profile"}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    precision, candidates = _precisions(d, where)
    lm_head = d.get("lm_head_precision")
    if lm_head is not None and lm_head not in HEAD_PRECISIONS:
        raise ValueError(f"{where}: lm_head_precision {lm_head!r} is not one of "
                         f"{', '.join(HEAD_PRECISIONS)} (leave it out for a 16-bit head)")
    kv_dtype = d.get("kv_cache_dtype", "auto")
    if kv_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"{where}: kv_cache_dtype {kv_dtype!r} is not one of "
                         f"{', '.join(KV_CACHE_DTYPES)}")
    rate = float(d.get("rate", 0.0))
    if rate < 0 or (not rate and not has_trace):
        raise ValueError(f"{where}: rate must be > 0 requests/s (or give a trace)")
    slo = d.get("slo") or {}
    if not isinstance(slo, dict) or set(slo) - {"ttft", "tpot", "e2e"} or not slo:
        raise ValueError(f"{where}: slo must set some of ttft, tpot, e2e (seconds)")
    if any(float(v) <= 0 for v in slo.values()):
        raise ValueError(f"{where}: SLO bounds must be > 0 seconds")
    profile = d.get("profile")
    if profile is not None and not os.path.isfile(profile):
        raise ValueError(f"{where}: profile {profile!r} does not exist")
    if candidates and str(d["model"]).endswith(".gguf"):
        raise ValueError(f"{where}: precision auto: a GGUF file is served in its own "
                         f"precision; name it")
    return ModelSpec(str(d["name"]), _arch(str(d["model"]), where), precision, rate,
                     float(d.get("cv", 1.0)),
                     Lengths.of(d.get("prompt_len", 512), d.get("output_len", 128)),
                     SLO(**{k: float(v) for k, v in slo.items()}), profile, str(d["model"]),
                     lm_head, kv_dtype, candidates)


def _precisions(d: dict[str, Any], where: str) -> tuple[str, tuple[str, ...]]:
    """(the precision, auto's candidates ordered from the most precise, or ())."""
    precision = d.get("precision", "bfloat16")
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"{where}: precision {precision!r} is not one of "
                             f"{', '.join(PRECISIONS)}, or auto")
        if "precisions" in d:
            raise ValueError(f"{where}: precisions lists auto's candidates; the precision "
                             f"is {precision!r} (give precision: auto)")
        return precision, ()
    listed = d.get("precisions", list(DEFAULT_CANDIDATES))
    if not isinstance(listed, list) or not listed or any(p not in PRECISIONS for p in listed):
        raise ValueError(f"{where}: precisions must be a list of some of "
                         f"{', '.join(PRECISIONS)}, got {listed!r}")
    candidates = by_accuracy(listed)
    return candidates[0], candidates


def load_deployment(path: str) -> Deployment:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the deployment file: {e}") from None
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml
        data = yaml.safe_load(text)
    if not isinstance(data, dict) or not data.get("models") or "hardware" not in data:
        raise ValueError(f"{path}: a deployment needs `models` (a list) and `hardware`")
    unknown = set(data) - {"models", "hardware", "duration", "target_attainment",
                           "group_sizes", "trace", "seed", "objective"}
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    trace = data.get("trace")
    models = [_model(m, i, trace is not None) for i, m in enumerate(data["models"])]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: model names repeat: {names}")
    hw = hardware(data["hardware"])
    for m in models:
        least, at = min((dataclasses.replace(m, precision=p).weight_bytes, p)
                        for p in m.candidates or (m.precision,))
        if least > hw.count * hw.usable_bytes:
            even = f" even at {at}" if m.candidates else ""
            raise ValueError(
                f"model {m.name!r} needs {least / 2**30:.1f} GiB of weights{even}; "
                f"{hw.count} x {hw.name} hold {hw.count * hw.usable_bytes / 2**30:.1f} GiB")
    objective = data.get("objective", "cost")
    if objective not in ("cost", "accuracy"):
        raise ValueError(f"{path}: objective {objective!r} is not cost or accuracy")
    sizes = data.get("group_sizes")
    if sizes is not None and any(hw.count % s for s in sizes):
        raise ValueError(f"{path}: group_sizes must divide the device count {hw.count}")
    if trace is not None and not os.path.isfile(trace):
        raise ValueError(f"{path}: trace {trace!r} does not exist")
    return Deployment(models, hw, float(data.get("duration", 60.0)),
                      float(data.get("target_attainment", 0.99)), sizes, trace,
                      int(data.get("seed", 0)), objective)
