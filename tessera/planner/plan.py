"""`tessera plan DEPLOYMENT.yaml`: placement, parallelism, predicted SLO attainment and
latency, and cost, for the models, traffic, SLOs and hardware a deployment file names.

Objects: Cost (per hour and per request: provisioned, and by the cost formula), `cost(...)`,
`plan(deployment)` -> PlanReport (the deployment with the precisions chosen for its `auto`
models (planner/precision.py), the best placement, the alternatives, each precision
assignment planned, the costs, what would meet an SLO the hardware cannot),
`render(report)` (the text `tessera plan` prints), `add_plan_parser(sub)`.
The cost formula (MISSION.md section 5): cost = instance price x inference latency x QPS
+ memory held x storage price. "Inference latency" is what a request occupies devices for:
each simulated step's time times its group's devices, shared among the step's requests by
tokens (continuous batching makes a request's own latency a poor measure of what it
costs); so price x latency x QPS is the price of the busy device-time. "Provisioned" prices
every device for the whole hour, busy or not. Memory: the weights and KV cache each group
holds, in GB.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from tessera.planner.deployment import Deployment, load_deployment
from tessera.planner.placement import Placement, busy_per_request, devices_used, search
from tessera.planner.precision import COST_TOLERANCE, Trial, choose, meets
from tessera.planner.traffic import arrivals, merge, read_trace

GB = 1e9


@dataclasses.dataclass
class Cost:
    provisioned_per_hour: float
    formula_per_hour: float  # price x busy device-time + memory x storage price
    per_request_provisioned: float
    per_request_formula: float
    memory_gb: float


def cost(d: Deployment, p: Placement) -> Optional[Cost]:
    hw, r = d.hardware, p.result
    if hw.price_per_hour is None or r is None or not r.records:
        return None
    mem_price = hw.memory_price_per_gb_hour or 0.0
    memory_gb = devices_used(p) * hw.usable_bytes / GB
    qps = len(r.records) / d.duration
    busy_device_s = busy_per_request(p)
    memory_per_hour = memory_gb * mem_price
    provisioned = devices_used(p) * hw.price_per_hour + memory_per_hour
    formula = hw.price_per_hour / 3600 * busy_device_s * qps * 3600 + memory_per_hour
    per_hour_requests = qps * 3600
    return Cost(provisioned, formula, provisioned / per_hour_requests,
                formula / per_hour_requests, memory_gb)


@dataclasses.dataclass
class PlanReport:
    deployment: Deployment
    best: Optional[Placement]
    alternatives: list[Placement]
    cost: Optional[Cost]
    num_requests: int
    needs: Optional[str] = None  # what would meet the target, when it is not met
    # the precision assignments planned (empty: every model's precision was given)
    trials: list[Trial] = dataclasses.field(default_factory=list)


def _traffic(d: Deployment, seed: int = 0):
    if d.trace:
        return read_trace(d.trace, {m.name for m in d.models})
    return merge(*(arrivals(m.name, m.rate, d.duration, m.cv, m.lengths, seed + i)
                   for i, m in enumerate(d.models)))


def plan(d: Deployment) -> PlanReport:
    traffic = _traffic(d, d.seed)
    d, chosen, trials = choose(d, traffic)
    best = chosen.best
    report = PlanReport(d, best, chosen.others, cost(d, best) if best else None, len(traffic),
                        trials=trials if chosen.precisions else [])
    if not meets(d, best):
        report.needs = _what_would_meet(d, traffic)
    return report


def _what_would_meet(d: Deployment, traffic) -> str:
    """More devices (up to 8x), else the SLOs the best plan reaches."""
    for factor in (2, 4, 8):
        bigger = dataclasses.replace(d, hardware=dataclasses.replace(
            d.hardware, count=d.hardware.count * factor), group_sizes=None)
        best, _ = search(bigger, traffic)
        if best is not None and best.attainment >= d.target_attainment:
            return (f"{bigger.hardware.count} x {d.hardware.name} would: "
                    f"{best.layout.describe()}, attainment {best.attainment:.1%}")
    return ("even 8x the devices would not; the SLOs are tighter than the steps allow: "
            "loosen them or shorten the requests")


def render(rep: PlanReport) -> str:
    d, best = rep.deployment, rep.best
    hw = d.hardware
    lines = [f"tessera plan: {len(d.models)} model(s) on {hw.count} x {hw.name}, "
             f"{rep.num_requests} requests over {d.duration:g} s simulated "
             f"(target attainment {d.target_attainment:.0%})"]
    for m in d.models:
        src = f"profile {m.profile}" if m.profile else "roofline (no profile: run `tessera " \
            "bench profile` on the target for a calibrated plan)"
        head = f" (LM head {m.lm_head})" if m.lm_head else ""
        if m.candidates:
            head += (f" (chosen among {', '.join(m.candidates)})" if rep.best else
                     f" (the smallest of {', '.join(m.candidates)}; none fits)")
        kv = "" if m.kv_cache_dtype == "auto" else f", {m.kv_cache_dtype} KV cache"
        lines.append(f"  {m.name}: {m.arch.architecture} {m.arch.num_parameters() / 1e9:.1f}B "
                     f"{m.precision}{head}, {m.weight_bytes / 2**30:.1f} GiB of weights{kv}, "
                     f"{m.rate:g} req/s (cv {m.cv:g}), SLO {m.slo.describe()}; latency: {src}")
    if best is None:
        lines.append("no placement fits: " + "; ".join(
            f"{p.layout.describe()}: {p.note}" for p in rep.alternatives))
    else:
        r = best.result
        lines += ["", f"chosen: {best.layout.describe()}: {best.describe()}",
                  f"  predicted SLO attainment {best.attainment:.1%}"]
        for m in d.models:
            lines.append(
                f"  {m.name}: attainment {r.attainment({x.name: x.slo for x in d.models}, m.name):.1%}"
                f"; TTFT p50 {r.percentile('ttft', 50, m.name) * 1e3:.0f} ms, p99 "
                f"{r.percentile('ttft', 99, m.name) * 1e3:.0f} ms; TPOT p50 "
                f"{r.percentile('tpot', 50, m.name) * 1e3:.1f} ms, p99 "
                f"{r.percentile('tpot', 99, m.name) * 1e3:.1f} ms; end-to-end p99 "
                f"{r.percentile('e2e', 99, m.name):.2f} s")
        c = rep.cost
        if c is None:
            lines.append("  cost: not priced (give hardware.price_per_hour and "
                         "memory_price_per_gb_hour)")
        else:
            lines.append(f"  cost: ${c.provisioned_per_hour:.2f}/hour provisioned "
                         f"(${c.per_request_provisioned * 1000:.4f} per 1000 requests); by "
                         f"the formula (price x busy device-time + {c.memory_gb:.0f} GB x "
                         f"storage price): ${c.formula_per_hour:.2f}/hour, "
                         f"${c.per_request_formula * 1000:.4f} per 1000 requests")
        lines.append(f"  uses {devices_used(best)} of {hw.count} devices; busy "
                     f"device-time {busy_per_request(best) * 1e3:.1f} ms per "
                     "request")
        lines.append("alternatives (rejected):")
        for p in rep.alternatives:
            if p.note:
                lines.append(f"  {p.layout.describe()}: {p.note}")
                continue
            if p.attainment < best.attainment - 1e-9:
                why = f"lower attainment, {p.attainment:.1%}"
            else:
                why = (f"as high, but {busy_per_request(p) * 1e3:.1f} ms"
                       f" of busy device-time per request on {devices_used(p)} devices")
            lines.append(f"  {p.layout.describe()}: {p.describe()}: {why}")
    if rep.trials:
        lines += _trials(rep)
    if rep.needs:
        lines.append(f"the target attainment {d.target_attainment:.0%} is not met; {rep.needs}")
    return "\n".join(lines)


def _trials(rep: PlanReport) -> list[str]:
    """A line per precision assignment planned, the chosen one marked."""
    rule = (f"the most precise within {COST_TOLERANCE:.0%} of the cheapest"
            if rep.deployment.objective == "cost" else "the most precise")
    lines = [f"precisions planned (objective {rep.deployment.objective}: {rule} reaching "
             f"{rep.deployment.target_attainment:.0%}):"]
    for t in rep.trials:
        p = t.best
        if p is None:
            what = "fits no layout"
        else:
            what = (f"attainment {p.attainment:.1%}, {busy_per_request(p) * 1e3:.1f} ms of "
                    f"busy device-time per request on {devices_used(p)} devices, "
                    f"{p.layout.describe()}")
        mark = "  <- chosen" if p is not None and p is rep.best else ""
        lines.append(f"  {t.describe()}: {what}{mark}")
    return lines


def _run(args: argparse.Namespace) -> int:
    report = plan(load_deployment(args.deployment))
    print(render(report))
    return 0 if report.needs is None else 3


def add_plan_parser(sub, parents: list) -> None:
    p = sub.add_parser("plan", parents=parents,
                       help="place models on devices for their traffic and SLOs, choose the "
                            "precision of those marked auto, and price it (AlpaServe's "
                            "placement with a simulator of the engine)")
    p.add_argument("deployment", metavar="DEPLOYMENT.yaml",
                   help="models, traffic, SLOs and hardware (tessera/planner/deployment.py)")
    p.set_defaults(func=_run)
