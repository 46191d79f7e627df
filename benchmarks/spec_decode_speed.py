"""Speculative decoding on the GPU (issue 21's speed figures), in one call.

Random weights of a target shape (default Llama-3-8B) and a draft shape (default
Llama-3.2-1B, bf16). Measures:
  graph   the target's forward as a CUDA graph at 1..8 rows (a verify step of k + 1
          tokens is k + 1 decode rows) and the draft's at 1 row: the cost model's parts;
  plain   batch-1 decode without speculation (tok/s, ms/step);
  self    the target as its own draft, k drafts every step (acceptance 1: the machinery's
          upper bound), end to end;
  draft   the draft shape proposing k every step (random weights: acceptance ~0, the
          worst case), end to end, with the host time of a verify step and of a proposal;
  draft_int8  the same with the draft's weights in int8 (--speculative-quantization);
  adaptive    the draft with the adaptive count (default): drafts that never come true
          are switched off but for a probe every 8 steps;
  b64     batch 64 (prompt 1024) plain and with the draft (the off-switch at
          speculative_max_batch 32 keeps it a plain step).
Then the batch-1 speedup that the measured step costs give at acceptance rates a:
tokens per step (1 - a^(k+1)) / (1 - a) over (verify + proposal) seconds, against
plain decode. --acceptance adds measured rates (benchmarks/spec_decode_acceptance.py).

    python benchmarks/spec_decode_speed.py --out $OUT/spec.json --acceptance 0.72,0.45
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
    out = {}
    for a in rates:
        tokens = (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1
        out[f"{a:.2f}"] = tokens / step_ms * plain_step_ms
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="spec_decode_speed.json")
    ap.add_argument("--target", default="llama-3-8b")
    ap.add_argument("--draft", default="llama-3.2-1b")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--b64-prompt", type=int, default=1024)
    ap.add_argument("--acceptance", default="", help="measured rates to predict at")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bw = measure_bandwidth(device)
    rates = [0.5, 0.6, 0.7, 0.8, 0.9] + [float(a) for a in args.acceptance.split(",") if a]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    res: dict = {"device": name, "date": time.strftime("%Y-%m-%d"), "target": args.target,
                 "draft": args.draft, "k": args.k}

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
    fixed = dict(num_speculative_tokens=args.k, speculative_adaptive=False)
    plain_ms = res["plain_b1"]["median_step_ms"]
    runs = [("self", args.target, None), ("draft", args.draft, None),
            ("draft_int8", args.draft, "int8"), ("adaptive", args.draft, None)]
    for name, draft, quant in runs:
        options = dict(fixed, speculative_adaptive=name == "adaptive")
        engine, res[f"{name}_setup_s"] = build(args.target, speculative_model=draft,
                                               speculative_quantization=quant, **options)
        with frozen():
            run_latency(engine, 1, 32, 16, bw, seed=9)
            clear_timings(engine)
            res[f"{name}_b1"] = run_latency(engine, 1, 32, args.output_len, bw)
            res[f"{name}_ms"] = ms = spec_timings(engine)
            res[f"{name}_graphs"] = graph_costs(engine, rows=[args.k + 1])
            if name == "draft":
                res["draft_b64"] = run_latency(engine, 64, args.b64_prompt, 128, bw)
        release(engine)
        if name in ("draft", "draft_int8"):
            res[f"{name}_predicted_speedup"] = predicted(
                plain_ms, ms["verify"] + ms["propose"], args.k, rates)
        save()
    print(f"{res['device']}, {res['date']}: {args.target} target, {args.draft} draft, "
          f"k = {args.k}")
    g = res["graphs"]["target_us"]
    print("target forward (graph), rows: " + ", ".join(f"{r}: {us:.0f} us"
                                                        for r, us in g.items()))
    for name in ("draft", "draft_int8"):
        print(f"{name} forward (graph), 1 row: {res[name + '_graphs'].get('draft_us', 0):.0f} us")
    print("| run | tok/s | ms/step | acceptance | verify ms | propose ms |")
    print("|---|---|---|---|---|---|")
    for name in ("plain_b1", "self_b1", "draft_b1", "draft_int8_b1", "adaptive_b1", "plain_b64",
                 "draft_b64"):
        r = res[name]
        ms = res.get(name.split("_")[0] + "_ms", {})
        print(f"| {name} | {r['tok_s']:.1f} | {r['median_step_ms']:.2f} | "
              f"{r.get('acceptance_rate', float('nan')):.2f} | {ms.get('verify', 0):.2f} | "
              f"{ms.get('propose', 0):.2f} |")
    for name in ("draft", "draft_int8"):
        print(f"{name}: predicted batch-1 speedup over plain at acceptance a: " + ", ".join(
            f"{a}: {x:.2f}x" for a, x in res[name + "_predicted_speedup"].items()))


if __name__ == "__main__":
    main()
