"""A/B of the quantized kernels' knobs at batch 1 in one call: decode tok/s per method and
variant, each variant an engine of its own (CUDA graphs are captured with the knobs set),
variants taken in turn, --repeat times (A B A B ...: drift shows as a spread).

    python benchmarks/quant_ab.py --methods int8,fp8,int4 \\
        --variant base: \\
        --variant one_wave_off:tessera.kernels.skinny_config.QUANT_ONE_WAVE=False \\
        --variant "sliced:tessera.kernels.skinny_config.QUANT_SLICES={'int4': 4}"

A variant is NAME:KNOB=VALUE;KNOB=VALUE (quant_speed.py's --set, ";" between knobs; none:
the defaults); each knob is put back after its variant. Prints one table (median tok/s
over the repeats, the spread, the ratio to the first variant) and writes JSON to --out.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import statistics
import time

import torch

from tessera.bench.offline import measure_bandwidth
from quant_speed import bench_method, set_knob


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"NAME:KNOB=VALUE;KNOB=VALUE" -> (NAME, [KNOB=VALUE, ...]); ValueError if no NAME."""
    name, _, knobs = text.partition(":")
    if not name:
        raise ValueError(f"{text!r} has no NAME before ':'")
    return name, [k for k in knobs.split(";") if k]


def current(knob: str):
    """The present value of a knob "package.module.NAME=VALUE" (to put back); ValueError
    where the knob or its VALUE (a Python literal) is not one."""
    target, eq, value = knob.partition("=")
    module, _, name = target.rpartition(".")
    if not (eq and module and name):
        raise ValueError("not MODULE.NAME=VALUE")
    ast.literal_eval(value)
    return target, getattr(importlib.import_module(module), name)


def run_variant(knobs: list[str], shape: str, method: str, bandwidth: float,
                args: argparse.Namespace) -> float:
    """b1 tok/s of one engine built with the knobs set; the knobs put back after."""
    saved = [current(k) for k in knobs]
    try:
        for k in knobs:
            set_knob(k)
        return bench_method(shape, method, ["b1"], bandwidth, args)["b1"]["tok_s"]
    finally:
        for target, value in saved:
            module, _, name = target.rpartition(".")
            setattr(importlib.import_module(module), name, value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3-8b")
    ap.add_argument("--methods", default="int8,fp8,int4")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KNOB=VALUE;...")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="quant_ab.json")
    args = ap.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant or ["base:"]]
    except ValueError as e:
        ap.error(f"--variant {e}")
    for _, knobs in variants:  # a bad knob fails here, before any engine is built
        for k in knobs:
            try:
                current(k)
            except (ImportError, AttributeError, ValueError, SyntaxError) as e:
                ap.error(f"--variant knob {k!r}: {e}")
    args.max_num_seqs, args.max_num_batched_tokens, args.profile, args.engine = 8, 8192, [], {}
    bandwidth = measure_bandwidth(torch.device("cuda"))
    tok_s: dict[tuple[str, str], list[float]] = {}
    errors: dict[str, str] = {}
    for _ in range(args.repeat):
        for method in args.methods.split(","):
            for name, knobs in variants:
                runs = tok_s.setdefault((method, name), [])
                try:  # one variant failing leaves the others' figures
                    runs.append(run_variant(knobs, args.shape, method, bandwidth, args))
                    print(f"{method} {name}: {runs[-1]:.1f} tok/s", flush=True)
                except Exception as e:  # noqa: BLE001
                    errors[f"{method} {name}"] = repr(e)
                    print(f"{method} {name}: {e!r}", flush=True)
                    torch.cuda.empty_cache()
                with open(args.out, "w") as f:  # after every run: a timeout keeps the rest
                    json.dump({"device": torch.cuda.get_device_name(),
                               "date": time.strftime("%Y-%m-%d"), "shape": args.shape,
                               "variants": dict(variants), "errors": errors,
                               "tok_s": {f"{m} {n}": v for (m, n), v in tok_s.items()}},
                              f, indent=1)
    print(f"\n{args.shape}, batch 1, {torch.cuda.get_device_name()}, copy "
          f"{bandwidth / 1e12:.2f} TB/s\n| method | variant | tok/s | spread | vs {variants[0][0]} |"
          "\n|---|---|---|---|---|")
    for method in args.methods.split(","):
        base = tok_s[method, variants[0][0]]
        first = statistics.median(base) if base else float("nan")
        for name, _ in variants:
            runs = tok_s[method, name]
            if not runs:
                print(f"| {method} | {name} | failed | | |")
                continue
            mid = statistics.median(runs)
            print(f"| {method} | {name} | {mid:.1f} | {max(runs) - min(runs):.1f} | "
                  f"{mid / first:.3f} |")


if __name__ == "__main__":
    main()
