"""`tessera bench latency | throughput | serve | profile`: the subcommand.

`add_bench_parser(sub)` defines its options (the engine's from the config, cli_args.py);
`refuse_foreign_options` refuses, by name, options the chosen workload would ignore;
`run_bench` runs latency or throughput on an engine in this process (bench/offline.py),
the planner's step-time profile (bench/profile.py), or the serving workload against a
running server (bench/serving.py). All print a table
and can write JSON (`--json`).
"""
from __future__ import annotations

import argparse
import json

from tessera.bench.serving import add_serve_args, run_serve_bench
from tessera.cli_args import add_engine_args, engine_kwargs
from tessera.config import EngineConfig


def add_bench_parser(sub, parents: list) -> None:
    p = sub.add_parser("bench", help="latency, throughput and serving benchmarks",
                       parents=parents)
    p.add_argument("workload", choices=["latency", "throughput", "serve", "profile"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-range", type=int, nargs=2, default=(128, 1024))
    p.add_argument("--output-range", type=int, nargs=2, default=(128, 512))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="profile: batch sizes (default: 1 2 3 4 8 16 64 on a CPU, 1 2 4 8 16 "
                        "64 256 on a GPU)")
    p.add_argument("--input-lens", type=int, nargs="+", default=(64, 512),
                   help="profile: prompt lengths (default: 64 512)")
    p.add_argument("--colocated-with", default=None, metavar="MODEL",
                   help="profile: also time every step while MODEL (same engine options) "
                        "steps in between, as models sharing a device group take turns; "
                        "the planner uses these samples for groups of several models")
    p.add_argument("--json", default=None, help="write the results here (profile: the "
                                                 "profile `tessera plan` reads)")
    serve_options = add_serve_args(p)
    add_engine_args(p)
    p.set_defaults(func=run_bench, bench_parser=p, serve_options=serve_options)


LATENCY_OPTIONS = {"batch_size", "input_len", "output_len"}
REQUESTS_OPTIONS = {"num_prompts", "input_range", "output_range"}
PROFILE_OPTIONS = {"batch_sizes", "input_lens", "colocated_with"}


def refuse_foreign_options(args: argparse.Namespace) -> None:
    """SystemExit naming each option given a value that the chosen workload would ignore:
    the serve options outside serve, the latency ones outside latency, the request set's
    outside throughput and serve, the engine's for serve (the server's engine is measured)."""
    serve, engine, workload = args.serve_options, set(engine_kwargs(args)), args.workload
    applies = {"latency": LATENCY_OPTIONS | engine, "throughput": REQUESTS_OPTIONS | engine,
               "serve": REQUESTS_OPTIONS | serve | {"seed"},
               "profile": PROFILE_OPTIONS | engine}[workload]
    foreign = (LATENCY_OPTIONS | REQUESTS_OPTIONS | PROFILE_OPTIONS | serve | engine) - applies
    given = sorted(name for name in foreign if _normal(getattr(args, name))
                   != _normal(args.bench_parser.get_default(name)))
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        one = len(given) == 1
        why = (f" (it measures the running server's engine: give {'it' if one else 'them'} "
               "to `tessera serve`)" if workload == "serve" else "")
        raise SystemExit(f"{flags} {'does' if one else 'do'} not apply to "
                         f"`tessera bench {workload}`{why}")


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def run_bench(args: argparse.Namespace) -> int:
    refuse_foreign_options(args)
    if args.workload == "serve":  # the server's engine, not one of ours
        return run_serve_bench(args)
    from tessera.engine.client import InprocClient
    from tessera.gc_tuning import frozen

    kwargs = dict(engine_kwargs(args), skip_tokenizer_init=True)  # token ids in and out
    engine = InprocClient(EngineConfig.from_kwargs(**kwargs))
    with frozen():  # start-up's objects out of the collector, as in a server (gc_tuning.py)
        return _run_workload(args, engine)


_WARM_UP_SEED = 99_991  # added to --seed: the warm-up's prompts differ from the timed ones


def _run_workload(args: argparse.Namespace, engine) -> int:
    """--seed seeds the timed requests' prompts and lengths (and, through the engine, the
    dummy weights)."""
    import torch

    from tessera.bench.offline import measure_bandwidth, run_latency, run_throughput

    info = engine.executor.info
    device = torch.device(info.device)
    if args.workload == "profile":
        return _profile(args, engine, device)
    if args.workload == "latency":
        bandwidth = measure_bandwidth(device)
        run_latency(engine, min(args.batch_size, 2), args.input_len, 8, bandwidth,
                    seed=_WARM_UP_SEED + args.seed)
        r = run_latency(engine, args.batch_size, args.input_len, args.output_len, bandwidth,
                        seed=args.seed)
        r["bandwidth_gb_s"] = bandwidth / 1e9
        print(f"latency  batch {r['batch']}  prompt {r['input_len']}  new {r['output_len']}: "
              f"{r['median_step_ms']:.2f} ms/step, {r['tok_s']:.1f} tok/s "
              f"({r['tok_s_per_seq']:.1f} per sequence); roofline {r['roofline_step_ms']:.2f} ms "
              f"at {bandwidth / 1e12:.2f} TB/s -> {r['roofline_ratio']:.1%}")
        if "transfer_step_ms" in r:
            print(f"weight offload: a step copies {r['offload_step_gib']:.2f} GiB at "
                  f"{r['offload_gb_s']:.1f} GB/s (host to device, measured): transfer bound "
                  f"{r['transfer_step_ms']:.2f} ms -> {r['transfer_ratio']:.1%}")
        if "acceptance_rate" in r:
            print(f"speculative decoding: {r['spec_drafted']} drafts, acceptance "
                  f"{r['acceptance_rate']:.1%}, mean accepted length "
                  f"{r['mean_accepted_length']:.2f} tokens per verify step")
    else:
        run_throughput(engine, 8, (16, 64), (8, 16), seed=_WARM_UP_SEED + args.seed)
        r = run_throughput(engine, args.num_prompts, tuple(args.input_range),
                           tuple(args.output_range), seed=args.seed)
        print(f"throughput  {r['num_prompts']} requests: {r['wall_s']:.1f} s, "
              f"{r['output_tok_s']:.0f} output tok/s, {r['total_tok_s']:.0f} total tok/s, "
              f"peak KV {r['peak_kv_usage']:.1%}, {r['preemptions']} preemptions")
        stats = engine.stats()
        if stats.get("spec_verify_steps"):
            from tessera.server.metrics import spec_rates
            rate, length = spec_rates(stats["spec_drafted"], stats["spec_accepted"],
                                      stats["spec_verify_steps"])
            r.update(acceptance_rate=rate, mean_accepted_length=length)
            print(f"speculative decoding: acceptance {rate:.1%}, mean accepted length "
                  f"{length:.2f}")
    r.update(model=engine.config.model.model, dtype=f"torch.{info.dtype}",
             device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def _profile(args: argparse.Namespace, engine, device) -> int:
    from tessera.bench.profile import run_profile
    batches = args.batch_sizes or ([1, 2, 4, 8, 16, 64, 256] if device.type == "cuda"
                                   else [1, 2, 3, 4, 8, 16, 64])
    longest = engine.config.max_model_len - 16
    lens = [n for n in args.input_lens if n <= longest] or [longest]
    run_profile(engine, [1, 2], lens[:1], 4, seed=_WARM_UP_SEED + args.seed)  # warm-up
    r = run_profile(engine, batches, lens, 16, seed=args.seed)
    _print_fit("profile ", r, batches, lens)
    if args.colocated_with:
        r["colocated"] = _colocated(args, engine, batches, lens)
        _print_fit(f"with {args.colocated_with}", r["colocated"], batches, lens)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


def _colocated(args: argparse.Namespace, engine, batches, lens) -> dict:
    """The same grid, timed while the --colocated-with model steps between the steps."""
    from tessera.bench.profile import drain, keep_busy, run_profile
    from tessera.engine.client import InprocClient
    kwargs = dict(engine_kwargs(args), skip_tokenizer_init=True, model=args.colocated_with)
    other = InprocClient(EngineConfig.from_kwargs(**kwargs))
    between = keep_busy(other)
    run_profile(engine, [1, 2], lens[:1], 4, seed=_WARM_UP_SEED + args.seed, between=between)
    r = run_profile(engine, batches, lens, 16, seed=args.seed, between=between)
    drain(other)
    return {"with": args.colocated_with, **{k: r[k] for k in (
        "fit", "fit_error_median", "fit_error_p90", "samples")}}


def _print_fit(label: str, r: dict, batches, lens) -> None:
    f = r["fit"]
    print(f"{label}  {len(r['samples'])} steps (batches {batches}, prompts {lens}): step = "
          f"{f['c0'] * 1e3:.3f} ms + {f['c_tok'] * 1e6:.3f} us/token + {f['c_seq'] * 1e6:.3f} "
          f"us/sequence + {f['c_ctx'] * 1e9:.3f} ns/context token; fit error median "
          f"{r['fit_error_median']:.1%}, p90 {r['fit_error_p90']:.1%}")

