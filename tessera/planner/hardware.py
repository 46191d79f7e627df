"""Hardware the planner places models on, and what it costs.

Objects: Hardware (a count of identical devices: memory, copy bandwidth, FLOP rate, link
bandwidth between devices of a group; price per device-hour and per GB-hour of memory),
PRESETS (the lent H200 as measured, an H100, the CPU machine) and `hardware(spec)`, which
takes a preset name or a dict of fields (a preset's fields overridden by the dict's).
Prices have no default: without them the plan prices nothing and says so. No torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

GB = 1e9
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    count: int  # devices
    memory_gib: float  # usable per device
    bandwidth: float  # bytes/s, measured device copy rate
    flops: float  # FLOP/s, dense bf16
    link_bandwidth: float = 450e9  # bytes/s each way between devices of a group (NVLink)
    price_per_hour: Optional[float] = None  # $ per device-hour
    memory_price_per_gb_hour: Optional[float] = None  # $ per GB-hour of memory held
    memory_utilization: float = 0.9  # share of memory the engine may use

    def __post_init__(self) -> None:
        for name in ("count", "memory_gib", "bandwidth", "flops", "link_bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"hardware {name} must be > 0, got {getattr(self, name)}")

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * GiB * self.memory_utilization


PRESETS: dict[str, dict[str, Any]] = {
    # measured on the lent card (BENCHMARKS.md): 4.15 TB/s copy, 745 TFLOP/s bf16
    "h200": dict(name="H200", count=1, memory_gib=139.0, bandwidth=4.15e12, flops=745e12,
                 link_bandwidth=450e9),
    "h100": dict(name="H100", count=1, memory_gib=79.0, bandwidth=3.0e12, flops=750e12,
                 link_bandwidth=450e9),
    # the CPU machine: a device is the whole machine (the engine's threads share it)
    "cpu": dict(name="CPU", count=1, memory_gib=24.0, bandwidth=10e9, flops=100e9,
                link_bandwidth=5e9),
}


def hardware(spec: Any) -> Hardware:
    """A preset name ("h200"), or a dict with a `preset` and/or every field."""
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"hardware must be a preset name ({', '.join(PRESETS)}) or a mapping")
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown hardware preset {preset!r}; presets: {', '.join(PRESETS)}")
    fields = {**(PRESETS[preset] if preset else {}), **spec}
    known = {f.name for f in dataclasses.fields(Hardware)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"unknown hardware field(s): {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(known))}")
    missing = {"name", "count", "memory_gib", "bandwidth", "flops"} - set(fields)
    if missing:
        raise ValueError(f"hardware lacks {', '.join(sorted(missing))} (or give a preset)")
    return Hardware(**fields)
