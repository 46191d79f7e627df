"""Quantized weights on the GPU: decode speed per method against the roofline of the bytes
as loaded (issue 20's speed targets), in one call.

For each (shape, method) asked: an engine over random weights of the shape (bf16
activations; the method's weights quantized as they are made, never held whole in 16
bits), then, as asked by --runs:
  b1   latency, batch 1, prompt 32, 256 new tokens (CUDA graphs; roofline: weight bytes as
       loaded + KV bytes, over the measured copy bandwidth);
  b64  decode at batch 64, prompt 1024, 128 new tokens;
  tput the throughput workload (--num-prompts requests, prompts 128-1024, outputs 128-512).
Prints one table (tok/s, ms/step, roofline ratio, weight GiB by precision, the issue's
target) and writes JSON to --out. Examples:

    python benchmarks/quant_speed.py --out $OUT/q8b.json --shape llama-3-8b \
        --methods none,int8,int4,fp8 --runs b1 --runs-for none,fp8:b64,tput
    python benchmarks/quant_speed.py --out $OUT/q70b.json --shape llama-3-70b \
        --methods int8,fp8 --runs b1
A method "KIND+head" (int8+head, int4+head, fp8+head) quantizes the LM head too, and
"KIND+head=HEAD" in HEAD's format (int4+head=int8) (--lm-head-quantization; the others
keep it 16-bit, as the issue's targets are set).
--profile b1,b64 adds the kernels of steady decode steps at batch 1 / 64 (step_kernels.py);
--set MODULE.NAME=VALUE sets an A/B knob before the engines are built; --engine KEY=VALUE
an engine option (e.g. pdl=False: with PDL off, the profile's kernel times add up).
"""
from __future__ import annotations

import argparse
import ast
import gc
import importlib
import json
import time

import torch

from tessera.bench.offline import (measure_bandwidth, random_weights_engine, run_latency,
                                   run_throughput)
from tessera.gc_tuning import frozen

from step_kernels import kernel_profile, print_profile

# issue 20: batch-1 tok/s on the Llama-3-8B shape, and 70B with 8-bit weights
TARGETS = {("llama-3-8b", "int8", "b1"): 400, ("llama-3-8b", "int4", "b1"): 550,
           ("llama-3-8b", "fp8", "b1"): 380, ("llama-3-70b", "int8", "b1"): 50,
           ("llama-3-70b", "fp8", "b1"): 50}


def set_knob(text: str) -> None:
    """"package.module.NAME=VALUE" (VALUE a Python literal): sets a module's A/B knob;
    ValueError naming what is wrong."""
    target, eq, value = text.partition("=")
    module, _, name = target.rpartition(".")
    if not (eq and module and name):
        raise ValueError(f"{text!r} is not MODULE.NAME=VALUE")
    try:
        mod = importlib.import_module(module)
        literal = ast.literal_eval(value)
    except (ImportError, ValueError, SyntaxError) as e:
        raise ValueError(f"{text!r}: {e}") from None
    if not hasattr(mod, name):
        raise ValueError(f"{module} has no {name}")
    setattr(mod, name, literal)
    print(f"knob {module}.{name} = {literal!r}", flush=True)


def engine_option(text: str) -> tuple:
    """"KEY=VALUE" (VALUE a Python literal) -> (KEY, value); ValueError naming what is wrong."""
    key, eq, value = text.partition("=")
    if not (eq and key.isidentifier()):
        raise ValueError(f"{text!r} is not KEY=VALUE")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"{text!r}: {e}") from None


def parse_runs_for(text: str) -> dict[str, list[str]]:
    """"none,fp8:b64,tput" -> {"none": [b64, tput], "fp8": [b64, tput]}."""
    out: dict[str, list[str]] = {}
    for part in filter(None, text.split(";")):
        methods, _, runs = part.partition(":")
        for m in methods.split(","):
            out.setdefault(m, []).extend(runs.split(","))
    return out


def bench_method(shape: str, method: str, runs: list[str], bandwidth: float,
                 args: argparse.Namespace) -> dict:
    options = dict(max_num_seqs=args.max_num_seqs,
                   max_num_batched_tokens=args.max_num_batched_tokens, **args.engine)
    kind, plus, extra = method.partition("+")  # "int4+head": the LM head int4 too
    option, _, head = extra.partition("=")  # "int4+head=int8": the head int8
    if plus and option != "head":
        raise ValueError(f"method {method!r}: '+head' or '+head=KIND' is the only option")
    if kind != "none":
        options["quantization"] = kind
    if plus:
        options["lm_head_quantization"] = head or kind
    start = time.perf_counter()
    engine = random_weights_engine(shape, **options)
    info = engine.executor.info
    result: dict = {"shape": shape, "method": method, "setup_s": time.perf_counter() - start,
                    "weight_gib": {k: v / 2**30 for k, v in info.weight_bytes.items()},
                    "kernels": info.kernels}
    with frozen():
        run_latency(engine, 2, 32, 8, bandwidth, seed=9)  # warm-up
        for run in args.profile:  # kernels of steady decode steps at batch 1 / 64
            batch, input_len = (1, 32) if run == "b1" else (64, 1024)
            result[f"profile_{run}"] = p = kernel_profile(engine, batch, input_len)
            print_profile(p, f"{shape} {method} {run}")
        if "b1" in runs:
            result["b1"] = run_latency(engine, 1, 32, 256, bandwidth)
        if "b64" in runs:
            result["b64"] = run_latency(engine, 64, 1024, 128, bandwidth)
        if "tput" in runs:
            result["tput"] = run_throughput(engine, args.num_prompts, (128, 1024), (128, 512))
    engine.shutdown()
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def table(results: list[dict]) -> str:
    lines = ["| shape | method | run | tok/s | ms/step | roofline | weights GiB | target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        gib = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["weight_gib"].items(),
                                                          key=lambda kv: -kv[1]))
        for run in ("b1", "b64", "tput"):
            if run not in r:
                continue
            x = r[run]
            target = TARGETS.get((r["shape"], r["method"].partition("+")[0], run), "")
            if run == "tput":
                lines.append(f"| {r['shape']} | {r['method']} | {run} | "
                             f"{x['output_tok_s']:.0f} out | | | {gib} | {target} |")
            else:
                lines.append(f"| {r['shape']} | {r['method']} | {run} | {x['tok_s']:.1f} | "
                             f"{x['median_step_ms']:.3f} | {x['roofline_ratio']:.0%} | {gib} | "
                             f"{target} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="quant_speed.json")
    ap.add_argument("--shape", default="llama-3-8b")
    ap.add_argument("--methods", default="none,int8,int4,fp8")
    ap.add_argument("--runs", default="b1", help="runs for every method: b1,b64,tput")
    ap.add_argument("--runs-for", default="", help="extra runs per method: 'none,fp8:b64,tput'")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--profile", default="", help="kernel profiles of decode steps: b1,b64")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                    help="an A/B knob set before the engines are built, e.g. "
                         "tessera.kernels.skinny_gemm.QUANT_PRELOAD=False (repeatable)")
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                    help="an engine option (VALUE a Python literal), e.g. pdl=False (repeatable)")
    args = ap.parse_args()
    try:
        args.engine = dict(engine_option(text) for text in args.engine)
    except ValueError as e:
        ap.error(f"--engine {e}")
    for knob in args.set:
        try:
            set_knob(knob)
        except ValueError as e:
            ap.error(f"--set {e}")
    args.profile = [r for r in args.profile.split(",") if r]
    bandwidth = measure_bandwidth(torch.device("cuda"))
    extra = parse_runs_for(args.runs_for)
    results = []
    for method in args.methods.split(","):
        runs = [r for r in args.runs.split(",") if r] + extra.get(method, [])
        try:
            results.append(bench_method(args.shape, method, runs, bandwidth, args))
        except Exception as e:  # noqa: BLE001 - one method failing leaves the others' figures
            results.append({"shape": args.shape, "method": method, "error": repr(e),
                            "weight_gib": {}})
            print(f"{args.shape} {method}: {e!r}", flush=True)
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                       "bandwidth_tb_s": bandwidth / 1e12, "results": results}, f, indent=1)
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print(table([r for r in results if "error" not in r]))


if __name__ == "__main__":
    main()
