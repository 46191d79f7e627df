"""AlpaServe's placement: groups of devices, a parallel layout per group, models on groups,
chosen with the simulator in the loop.

Objects: Layout (devices per group, TP x PP within a group), Placement (a layout, the models
on each group, the simulated result), `layouts(deployment)` (the candidates: for each group
size, all-TP, all-PP and, from four devices, TP=2 x PP), `latency_model(spec, hw, tp, pp)`
(the model's profile, scaled to the layout and precision by the roofline if it was taken at
others: `profile_precision`; the roofline without one), `build_groups(...)` (instances with
the KV blocks their group's memory leaves after every model's weights, shared equally; None
when a model's weights or one longest request do not fit), `greedy(...)` (AlpaServe's
Algorithm 1: start empty; each round, try adding one replica of each model to each distinct
group, simulate, keep the best; every model is placed first; stop when a replica no longer
raises SLO attainment, or, at equal attainment, lowers the mean latency) and
`search(deployment, arrivals)` -> (best, alternatives), the best being the highest
attainment, then the least busy device-time (`device_seconds`; per request:
`busy_per_request`), then the fewest devices (`devices_used`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from tessera.planner.deployment import Deployment, ModelSpec
from tessera.planner.hardware import Hardware
from tessera.planner.latency import (ProfileModel, RooflineModel, ScaledModel,
                                     load_profile)
from tessera.planner.simulator import Group, Instance, SimResult, simulate
from tessera.planner.traffic import Arrival
from tessera.planner.weights import BYTES_PER_WEIGHT

BLOCK = 16


@dataclasses.dataclass(frozen=True)
class Layout:
    group_size: int
    tp: int
    pp: int

    def describe(self) -> str:
        return f"groups of {self.group_size} (TP={self.tp}, PP={self.pp})"


@dataclasses.dataclass
class Placement:
    layout: Layout
    groups: list[list[str]]  # model names on each group
    result: Optional[SimResult] = None
    attainment: float = 0.0
    note: str = ""

    def describe(self) -> str:
        n = self.layout.group_size
        return "; ".join(f"group {i} ({n} device{'s' * (n > 1)}): {', '.join(g) or 'idle'}"
                         for i, g in enumerate(self.groups))


def layouts(d: Deployment) -> list[Layout]:
    sizes = d.group_sizes or [s for s in (1, 2, 4, 8, 16, 32, 64)
                              if s <= d.hardware.count and d.hardware.count % s == 0]
    out = []
    for g in sizes:
        shapes = {(g, 1), (1, g)} | ({(2, g // 2)} if g >= 4 else set())
        for tp, pp in sorted(shapes):
            if all(_splits(m, tp, pp) for m in d.models):
                out.append(Layout(g, tp, pp))
    return out


def _splits(m: ModelSpec, tp: int, pp: int) -> bool:
    a = m.arch
    return a.num_heads % tp == 0 and a.intermediate_size % tp == 0 and pp <= a.num_layers


# (path, mtime, size, colocated) -> the profile's fit and metadata, read once per version
_PROFILES: dict[tuple, tuple[Optional[ProfileModel], dict]] = {}


def latency_model(spec: ModelSpec, hw: Hardware, tp: int, pp: int, colocated: bool = False):
    """The model's step times at TP x PP: its profile's fit (scaled by the roofline's
    ratio when measured at another layout), else the roofline. colocated: the fit of the
    profile's samples taken with another model taking turns, None when it has none."""
    roof = RooflineModel(spec.arch, hw, tp, pp, weights=spec.bytes,
                         kv_itemsize=spec.kv_itemsize)
    if spec.profile is None:
        return None if colocated else roof
    stat = os.stat(spec.profile)  # a profile written again is read again
    key = (spec.profile, stat.st_mtime_ns, stat.st_size, colocated)
    if key not in _PROFILES:
        _PROFILES[key] = load_profile(spec.profile, colocated)
    base, meta = _PROFILES[key]
    if base is None:
        return None
    at_tp, at_pp = int(meta.get("tensor_parallel_size", 1)), int(
        meta.get("pipeline_parallel_size", 1))
    at_precision = profile_precision(meta, spec.precision)
    if (at_tp, at_pp, at_precision) == (tp, pp, spec.precision):
        return base
    measured_at = RooflineModel(spec.arch, hw, at_tp, at_pp, kv_itemsize=spec.kv_itemsize,
                                weights=dataclasses.replace(spec.bytes, precision=at_precision))
    return ScaledModel(base, measured_at, roof)


def profile_precision(meta: dict, otherwise: str) -> str:
    """The precision a profile was measured at: its `precision` (written since 2026-12-06),
    else its dtype; otherwise where neither is a planner precision (a float32 CPU profile:
    taken as measured at the precision planned)."""
    for at in (meta.get("precision"), meta.get("dtype")):
        if at in BYTES_PER_WEIGHT:
            return at
    return otherwise


def build_groups(d: Deployment, layout: Layout, groups: list[list[str]],
                 models: dict[str, ModelSpec]) -> Optional[list[Group]]:
    hw, out = d.hardware, []
    for i, names in enumerate(groups):
        budget = layout.group_size * hw.usable_bytes
        specs = [models[n] for n in names]
        left = budget - sum(s.weight_bytes for s in specs)
        instances = []
        for s in specs:
            blocks = int(left / len(specs) // (s.kv_bytes_per_token * BLOCK))
            if blocks * BLOCK < s.max_len:
                return None  # no room for its longest request
            shared = (latency_model(s, hw, layout.tp, layout.pp, colocated=True)
                      if len(specs) > 1 else None)
            instances.append(Instance(s.name, latency_model(s, hw, layout.tp, layout.pp),
                                      num_blocks=blocks, block_size=BLOCK,
                                      max_model_len=max(s.max_len, 1), shared_latency=shared))
        out.append(Group(f"g{i}", instances, devices=layout.group_size))
    return out


def evaluate(d: Deployment, layout: Layout, groups: list[list[str]],
             models: dict[str, ModelSpec], arrivals: list[Arrival]) -> Optional[Placement]:
    built = build_groups(d, layout, groups, models)
    if built is None:
        return None
    placed = {n for g in groups for n in g}
    served = [a for a in arrivals if a.model in placed]
    result = simulate(built, served)
    slos = {m.name: m.slo for m in d.models}
    met = sum(slos[r.model].met(r) for r in result.records)
    return Placement(layout, [list(g) for g in groups], result,
                     met / len(arrivals) if arrivals else 1.0)


def greedy(d: Deployment, layout: Layout, arrivals: list[Arrival]) -> Optional[Placement]:
    models = {m.name: m for m in d.models}
    count = d.hardware.count // layout.group_size
    groups: list[list[str]] = [[] for _ in range(count)]
    best: Optional[Placement] = None
    while True:
        unplaced = [n for n in models if not any(n in g for g in groups)]
        trials, seen = [], set()
        for i, here in enumerate(groups):
            key = tuple(sorted(here))
            if key in seen:
                continue  # a group like one tried already: the same result
            seen.add(key)
            for name in (unplaced[:1] if unplaced else models):
                if name not in here:
                    trial = [list(g) for g in groups]
                    trial[i].append(name)
                    trials.append(trial)
        scored = [p for p in (evaluate(d, layout, t, models, arrivals) for t in trials) if p]
        if not scored:
            if unplaced:
                return None  # a model fits nowhere in this layout
            return best
        top = max(scored, key=_merit)
        if not unplaced and best is not None and _merit(top) <= _merit(best):
            return best
        best, groups = top, top.groups


def _merit(p: Placement) -> tuple[float, float]:
    """SLO attainment first; among equals, the lower mean end-to-end latency (headroom for
    traffic above the simulated: replicas keep going onto idle devices while they help)."""
    rs = p.result.records
    mean = sum(r.e2e for r in rs) / len(rs) if rs else 0.0
    return (round(p.attainment, 9), -round(mean, 6))


def device_seconds(p: Placement) -> float:
    """The busy device-time the placement's requests took (the cost formula's basis)."""
    return sum(r.device_seconds for r in p.result.records) if p.result else float("inf")


def search(d: Deployment, arrivals: list[Arrival]) -> tuple[Optional[Placement],
                                                             list[Placement]]:
    """The best placement over every layout, and the others (each layout's best, or a
    note that nothing fits it). Best: the highest SLO attainment; among equals, the least
    busy device-time (the cost formula's price x latency x QPS), then the fewest devices."""
    results = []
    for layout in layouts(d):
        p = greedy(d, layout, arrivals)
        if p is None:
            p = Placement(layout, [], note="the models do not fit this layout's groups")
        results.append(p)
    feasible = [p for p in results if p.result is not None]
    if not feasible:
        return None, results
    top = max(p.attainment for p in feasible)
    best = min((p for p in feasible if p.attainment >= top - 1e-9),
               key=lambda p: (device_seconds(p), devices_used(p)))
    return best, [p for p in results if p is not best]


def busy_per_request(p: Placement) -> float:
    """The busy device-time a request took, on average (the cost formula's latency)."""
    return device_seconds(p) / max(1, len(p.result.records)) if p.result else float("inf")


def devices_used(p: Placement) -> int:
    return sum(1 for g in p.groups if g) * p.layout.group_size
