"""The planner's simulator against real runs (issue 24's validation), on the CPU machine.

Two small models (random weights of the SmolLM2-135M shape and of a 12-layer, 512-wide
Llama) share one device, as a group of the planner does: one loop steps their two
engines in turn (round robin among those with work), requests arriving on the wall clock
from a trace. First each model's step times are profiled (`tessera bench profile`'s
run_profile) on the same engine settings, alone and with the other model stepping in
between (the step times of models taking turns, which the simulator uses for a model
whose group-mate stepped last); then for each trace (Poisson, and Gamma with a
coefficient of variation of 3) the real run is set beside the simulator's prediction for
the same arrivals (planner/simulator.py with the profiles' fits): SLO attainment and the
p50 / p99 of TTFT, TPOT and end-to-end latency, per model and in all.

    python benchmarks/planner_validation.py --duration 60 --out results.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from tessera.bench.offline import random_weights_engine
from tessera.bench.profile import drain, keep_busy, run_profile
from tessera.planner.latency import ProfileModel
from tessera.planner.simulator import SLO, Group, Instance, Record, SimResult, simulate
from tessera.planner.traffic import Lengths, arrivals, merge
from tessera.sampling_params import SamplingParams

BLOCKS, BLOCK = 512, 16
# no async scheduling: on a CPU the next step would run before the last one's tokens are
# handed out, one step more of latency that a GPU (where it overlaps) does not have
LIMITS = dict(max_model_len=1024, num_blocks=BLOCKS, block_size=BLOCK,
              max_num_batched_tokens=256, max_num_seqs=64, enable_prefix_caching=False,
              async_scheduling=False)


def small_llama(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 512,
           "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 8,
           "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def real_run(engines: dict, traffic) -> SimResult:
    """Requests arrive on the wall clock; the engines step in turn."""
    records: dict[str, Record] = {}
    names = list(engines)
    turn, pending, start = 0, list(traffic), time.perf_counter()
    while pending or any(e.has_unfinished_requests() for e in engines.values()):
        now = time.perf_counter() - start
        while pending and pending[0].time <= now:
            a = pending.pop(0)
            rid = f"r{len(records)}"
            records[rid] = Record(a.model, a.time, a.output_len)
            params = SamplingParams(max_tokens=a.output_len, ignore_eos=True, temperature=0)
            engines[a.model].add_request(rid, [7] * a.prompt_len, params, stream=True)
        busy = [n for n in names if engines[n].has_unfinished_requests()]
        if not busy:
            time.sleep(max(0.0, min(pending[0].time - now, 0.01)) if pending else 0)
            continue
        name = next(n for n in names[turn:] + names[:turn] if n in busy)
        turn = (names.index(name) + 1) % len(names)
        for o in engines[name].step():
            t = time.perf_counter() - start
            rec = records[o.request_id]
            if o.outputs[0].token_ids and rec.first_token == math.inf:
                rec.first_token = t
            if o.finished:
                rec.finish = t
    return SimResult(list(records.values()), {}, time.perf_counter() - start)


def summary(r: SimResult, slos: dict[str, SLO], model=None) -> dict:
    out = {"attainment": r.attainment(slos, model)}
    for metric in ("ttft", "tpot", "e2e"):
        for q in (50, 99):
            out[f"{metric}_p{q}"] = r.percentile(metric, q, model)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rates", type=float, nargs=2, default=(0.4, 0.3))
    ap.add_argument("--out", default=None)
    ap.add_argument("--solo-profiles", dest="colocated", action="store_false",
                    help="profile each model alone only (the simulator then ignores that the "
                         "models take turns)")
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {"smollm2": "smollm2-135m", "llama512": small_llama("/tmp/tessera-llama512")}
    engines = {n: random_weights_engine(m, dtype="float32", **LIMITS)
               for n, m in models.items()}
    fits, shared = {}, {}
    for n, e in engines.items():
        (other,) = [o for m, o in engines.items() if m != n]
        run_profile(e, [1, 2], [64], 4)  # warm-up
        p = run_profile(e, [1, 2, 3, 4, 8, 16], [32, 128], 16)
        fits[n] = ProfileModel.fit([tuple(s) for s in p["samples"]])
        print(n, p["fit"], f"fit error median {p['fit_error_median']:.1%}", flush=True)
        if args.colocated:  # the other model steps between the timed steps
            p = run_profile(e, [1, 2, 3, 4, 8, 16], [32, 128], 16, between=keep_busy(other))
            drain(other)
            shared[n] = ProfileModel.fit([tuple(s) for s in p["samples"]])
            print(n, "colocated", p["fit"], flush=True)
    lengths = {"smollm2": Lengths.of((16, 128), (8, 32)),
               "llama512": Lengths.of((16, 128), (8, 32))}
    slos = {"smollm2": SLO(ttft=1.0, tpot=0.15), "llama512": SLO(ttft=1.0, tpot=0.15)}
    rows = []
    for label, cv in (("poisson", 1.0), ("gamma cv 3", 3.0)):
        traffic = merge(*(arrivals(n, rate, args.duration, cv, lengths[n], seed=11)
                          for n, rate in zip(models, args.rates)))
        measured = real_run(engines, traffic)
        group = Group("cpu", [Instance(n, fits[n], BLOCKS, BLOCK, LIMITS[
            "max_num_batched_tokens"], LIMITS["max_num_seqs"], LIMITS["max_model_len"],
            shared_latency=shared.get(n)) for n in models])
        predicted = simulate([group], traffic)
        for model in (None, *models):
            row = {"trace": label, "model": model or "all", "requests": sum(
                1 for a in traffic if model is None or a.model == model),
                "measured": summary(measured, slos, model),
                "predicted": summary(predicted, slos, model)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "fits": {n: vars(f) for n, f in fits.items()},
                       "rows": rows}, f, indent=1)
    print(f"\n{'trace':11} {'model':9} {'n':>4} {'attain meas/pred':>17} "
          f"{'TTFT p50 meas/pred ms':>22} {'TTFT p99':>13} {'E2E p50 s':>11} {'E2E p99 s':>11}")
    for r in rows:
        m, p = r["measured"], r["predicted"]
        print(f"{r['trace']:11} {r['model']:9} {r['requests']:4d} "
              f"{m['attainment']:7.1%}/{p['attainment']:7.1%}   "
              f"{m['ttft_p50'] * 1e3:9.0f}/{p['ttft_p50'] * 1e3:<9.0f} "
              f"{m['ttft_p99'] * 1e3:6.0f}/{p['ttft_p99'] * 1e3:<6.0f} "
              f"{m['e2e_p50']:5.2f}/{p['e2e_p50']:<5.2f} {m['e2e_p99']:5.2f}/{p['e2e_p99']:<5.2f}")


if __name__ == "__main__":
    main()
