"""Speculative decoding on the GPU (issue 21's speed figures), in one call.

Random weights of a target shape (default Llama-3-8B) and a draft shape (default
Llama-3.2-1B, bf16). Measures:
  graph   the target's forward as a CUDA graph at 1..8 rows (a verify step of k + 1
          tokens is k + 1 decode rows) and the draft's at 1 row: the cost model's parts;
  plain   batch-1 decode without speculation (tok/s, ms/step);
  self    the target as its own draft, k drafts every step (acceptance 1 in exact
          arithmetic: the machinery's upper bound), end to end;
  draft_kK  the draft shape proposing K every step, for each K of --ks (random weights:
          acceptance ~0, the worst case), end to end, with the median host time of a
          verify step and of a proposal;
  adaptive  the draft with the adaptive count (the default): drafts that never come true
          are switched off but for probes;
  b64     batch 64 (prompt 1024) plain and with the draft (the off-switch at
          speculative_max_batch 32 keeps it a plain step).
Then the batch-1 speedup that the measured step costs give: at the tokens per verify
step measured on real models (--measured, from benchmarks/spec_decode_acceptance.py),
and at per-draft acceptance rates a, (1 - a^(k+1)) / (1 - a) tokens per step; both over
(verify + proposal) time, against plain decode's step.

    python benchmarks/spec_decode_speed.py --out $OUT/spec.json --measured 2:2.79,4:4.32
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from tessera.bench.offline import cuda_time_us, random_weights_engine, run_latency
from tessera.bench.offline import measure_bandwidth
from tessera.gc_tuning import frozen


def build(target: str, **options):
    start = time.perf_counter()
    engine = random_weights_engine(target, max_num_seqs=128, max_num_batched_tokens=8192,
                                   **options)
    return engine, time.perf_counter() - start


def release(engine) -> None:
    engine.shutdown()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def graph_costs(engine, rows=range(1, 9)) -> dict:
    runner = engine.core.executor.worker.runner
    out = {"target_us": {}}
    if runner.graphs is None:  # CPU (a smoke run) or enforce_eager
        return out
    for r in rows:
        graph = runner.graphs.graphs.get(r)
        if graph is not None:
            out["target_us"][r] = cuda_time_us(graph[0].replay)
    draft = getattr(runner.spec, "proposer", None)
    if getattr(draft, "graphs", None) is not None:
        out["draft_us"] = cuda_time_us(draft.graphs.graphs[1][0].replay)
    return out


def spec_timings(engine) -> dict:
    """Median ms of a verify step and of a proposal over the timed run."""
    runner = engine.core.executor.worker.runner
    return {k: statistics.median(v) * 1e3 if v else 0.0
            for k, v in runner.spec.timings.items()}


def clear_timings(engine) -> None:
    for v in engine.core.executor.worker.runner.spec.timings.values():
        v.clear()


def predicted(plain_step_ms: float, step_ms: float, k: int, rates) -> dict:
    """Speedup at per-draft acceptance a, drafts coming true independently."""
    out = {}
    for a in rates:
        tokens = (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1
        out[f"{a:.3f}"] = tokens / step_ms * plain_step_ms
    return out


def parse_measured(text: str) -> dict[int, float]:
    """"2:2.79,4:4.32" -> {2: 2.79, 4: 4.32}: tokens per verify step measured at k."""
    return {int(k): float(v) for k, v in (p.split(":") for p in text.split(",") if p)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="spec_decode_speed.json")
    ap.add_argument("--target", default="llama-3-8b")
    ap.add_argument("--draft", default="llama-3.2-1b")
    ap.add_argument("--ks", default="2,4,6", help="draft counts of the draft runs")
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--b64-prompt", type=int, default=1024)
    ap.add_argument("--acceptance", default="", help="per-draft rates to predict at")
    ap.add_argument("--measured", default="",
                    help="tokens per verify step measured at k on real models, 'k:t,...'")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bw = measure_bandwidth(device)
    rates = [0.5, 0.6, 0.7, 0.8, 0.9] + [float(a) for a in args.acceptance.split(",") if a]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    ks = [int(k) for k in args.ks.split(",")]
    res: dict = {"device": name, "date": time.strftime("%Y-%m-%d"), "target": args.target,
                 "draft": args.draft, "ks": ks}

    def save():
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    engine, res["plain_setup_s"] = build(args.target)
    with frozen():
        run_latency(engine, 2, 32, 8, bw, seed=9)
        res["plain_b1"] = run_latency(engine, 1, 32, args.output_len, bw)
        res["plain_b64"] = run_latency(engine, 64, args.b64_prompt, 128, bw)
        res["graphs"] = graph_costs(engine)
    release(engine)
    save()
    plain_ms = res["plain_b1"]["median_step_ms"]
    k_mid = ks[len(ks) // 2]
    runs = ([("self", args.target, k_mid)] + [(f"draft_k{k}", args.draft, k) for k in ks]
            + [("adaptive", args.draft, max(ks))])
    for run, draft, k in runs:
        engine, res[f"{run}_setup_s"] = build(
            args.target, speculative_model=draft, num_speculative_tokens=k,
            speculative_adaptive=run == "adaptive")
        with frozen():
            run_latency(engine, 1, 32, 16, bw, seed=9)
            clear_timings(engine)
            res[run] = run_latency(engine, 1, 32, args.output_len, bw)
            res[run]["ms"] = ms = spec_timings(engine)
            res[run]["graphs"] = graph_costs(engine, rows=[k + 1])
            if run == f"draft_k{k_mid}":
                res["draft_b64"] = run_latency(engine, 64, args.b64_prompt, 128, bw)
        release(engine)
        if run.startswith("draft_k"):
            step = ms["verify"] + ms["propose"]
            res[run]["predicted_speedup"] = predicted(plain_ms, step, k, rates)
            tokens = parse_measured(args.measured).get(k)
            if tokens:
                res[run]["speedup_at_measured"] = tokens / step * plain_ms
        save()
    print(f"{res['device']}, {res['date']}: {args.target} target, {args.draft} draft")
    g = res["graphs"]["target_us"]
    print("target forward (graph), rows: " + ", ".join(f"{r}: {us:.0f} us"
                                                        for r, us in g.items()))
    print(f"draft forward (graph), 1 row: {res[runs[1][0]]['graphs'].get('draft_us', 0):.0f} us")
    print("| run | tok/s | ms/step | acceptance | verify ms | propose ms | at measured |")
    print("|---|---|---|---|---|---|---|")
    for run in ["plain_b1"] + [r[0] for r in runs] + ["plain_b64", "draft_b64"]:
        r = res[run]
        ms = r.get("ms", {})
        at = r.get("speedup_at_measured")
        print(f"| {run} | {r['tok_s']:.1f} | {r['median_step_ms']:.2f} | "
              f"{r.get('acceptance_rate', float('nan')):.2f} | {ms.get('verify', 0):.2f} | "
              f"{ms.get('propose', 0):.2f} | {f'{at:.2f}x' if at else ''} |")
    for run, _, k in runs:
        if "predicted_speedup" in res[run]:
            print(f"{run}: batch-1 speedup at per-draft acceptance a: " + ", ".join(
                f"{a}: {x:.2f}x" for a, x in res[run]["predicted_speedup"].items()))


if __name__ == "__main__":
    main()
