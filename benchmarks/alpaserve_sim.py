"""AlpaServe's result in simulation: model parallelism lets models share devices, and under
bursty traffic a shared placement meets more SLOs than one device per model.

Eight models (four of the Llama-3-8B shape, four of the Qwen2.5-32B shape) on eight H200s,
step latencies from profiles measured on the H200 (benchmarks/profiles/, scaled to other
layouts by the roofline). Two placements:
  dedicated   each model alone on its own H200 (TP=PP=1);
  tessera     the planner's choice (planner/placement.py search) at the middle point of the
              sweep, then held fixed while the traffic changes.
Sweeps: SLO attainment against the total rate (CV 3), and against the coefficient of
variation (at the middle rate). SLO: TTFT <= 1 s and TPOT <= 0.1 s for every model.
Writes benchmarks/alpaserve_sim.png (needs matplotlib: `pip install matplotlib`) and
prints the table.

    python benchmarks/alpaserve_sim.py [--duration 30]
"""
from __future__ import annotations

import argparse
import json
import os

from tessera.planner.deployment import ModelSpec
from tessera.planner.hardware import hardware
from tessera.planner.placement import Layout, evaluate, search
from tessera.planner.simulator import SLO
from tessera.planner.deployment import Deployment
from tessera.planner.traffic import Lengths, arrivals, merge
from tessera.models.shapes import named_shape

HERE = os.path.dirname(os.path.abspath(__file__))
SLO_ALL = SLO(ttft=1.0, tpot=0.1)
LENGTHS = Lengths.of((128, 1024), (32, 256))


def deployment(rate_per_model: float, cv: float, duration: float) -> Deployment:
    models = []
    for i in range(8):
        shape = "llama-3-8b" if i < 4 else "qwen2.5-32b"
        profile = os.path.join(HERE, "profiles", f"{shape}-h200.json")
        models.append(ModelSpec(f"m{i}-{shape}", named_shape(shape), "bfloat16",
                                rate_per_model, cv, LENGTHS, SLO_ALL, profile))
    return Deployment(models, hardware({"preset": "h200", "count": 8}), duration)


def traffic(d: Deployment, seed: int = 0):
    return merge(*(arrivals(m.name, m.rate, d.duration, m.cv, m.lengths, seed + i)
                   for i, m in enumerate(d.models)))


def attainment(d: Deployment, layout: Layout, groups) -> float:
    p = evaluate(d, layout, groups, {m.name: m for m in d.models}, traffic(d))
    return p.attainment if p else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rates", type=float, nargs="+", default=[1, 2, 4, 6, 8])
    ap.add_argument("--cvs", type=float, nargs="+", default=[1, 2, 4, 6, 8])
    ap.add_argument("--mid-rate", type=float, default=4.0)
    ap.add_argument("--mid-cv", type=float, default=4.0)
    args = ap.parse_args()
    mid = deployment(args.mid_rate, args.mid_cv, args.duration)
    best, _ = search(mid, traffic(mid))
    dedicated = (Layout(1, 1, 1), [[m.name] for m in mid.models])
    chosen = (best.layout, best.groups)
    print(f"tessera's placement at {args.mid_rate} req/s per model, CV {args.mid_cv}: "
          f"{best.layout.describe()}: {best.describe()}", flush=True)
    rows = []
    for label, points in (("rate", args.rates), ("cv", args.cvs)):
        for x in points:
            rate, cv = (x, args.mid_cv) if label == "rate" else (args.mid_rate, x)
            d = deployment(rate, cv, args.duration)
            row = {"sweep": label, "rate_per_model": rate, "cv": cv,
                   "dedicated": attainment(d, *dedicated), "tessera": attainment(d, *chosen)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, label, xlabel in ((axes[0], "rate", "requests/s per model (CV %g)" % args.mid_cv),
                              (axes[1], "cv", "coefficient of variation (%g req/s per model)"
                               % args.mid_rate)):
        pts = [r for r in rows if r["sweep"] == label]
        xs = [r["rate_per_model"] if label == "rate" else r["cv"] for r in pts]
        for name, style in (("dedicated", "o--"), ("tessera", "s-")):
            ax.plot(xs, [100 * r[name] for r in pts], style, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("SLO attainment (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("8 models (4 x 8B, 4 x 32B) on 8 H200s, simulated with H200 profiles")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "alpaserve_sim.png"), dpi=110)
    print(f"\n{'sweep':5} {'rate':>5} {'cv':>4} {'dedicated':>10} {'tessera':>8}")
    for r in rows:
        print(f"{r['sweep']:5} {r['rate_per_model']:5g} {r['cv']:4g} {r['dedicated']:10.1%} "
              f"{r['tessera']:8.1%}")


if __name__ == "__main__":
    main()
