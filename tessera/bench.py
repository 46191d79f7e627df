"""`tessera bench latency | throughput | serve`: the standard workloads of BENCHMARKS.md.

latency: `batch` requests of `input_len` random tokens, `output_len` new tokens each
(ignore EOS); every engine step is timed; the median pure-decode step gives ms per
output token and tok/s, set against the decode roofline: (weight bytes read + KV bytes
read) / the copy bandwidth measured on this device in the same run.
throughput: `num_prompts` requests with input and output lengths drawn uniformly from
the given ranges, all submitted at once; wall time, output and total tok/s, peak KV use.
serve: the serving workload, against a running server (tessera/bench_serve.py).
All print a table and can write JSON (`--json`).
Helpers the scripts in benchmarks/ share: `measure_bandwidth`, `cuda_time_us`,
`random_weights_engine`, `run_latency`, `run_throughput`.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import torch

from tessera.bench_serve import add_serve_args, run_serve_bench
from tessera.config import EngineConfig
from tessera.gc_tuning import frozen
from tessera.llm_engine import LLMEngine
from tessera.quant.kv_cache import resolve_kv_cache_dtype
from tessera.sampling_params import SamplingParams


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    if device.type != "cuda":
        nbytes = 1 << 27
    src = torch.empty(nbytes // 2, dtype=torch.int16, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


def cuda_time_us(fn, reps: int = 50) -> float:
    """Mean microseconds of fn() on the current CUDA stream (one untimed call first),
    timed with CUDA events around `reps` back-to-back calls."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def random_weights_engine(model: str = "llama-3-8b", **overrides: Any) -> LLMEngine:
    """An engine over random weights of a named shape (or a checkpoint's config), as the
    benchmark scripts build it: bf16 on CUDA (float32 elsewhere), 2048-token context, no
    tokenizer; `overrides` are any other engine options."""
    options = dict(model=model, load_format="dummy", max_model_len=2048,
                   dtype="bfloat16" if torch.cuda.is_available() else "float32",
                   skip_tokenizer_init=True)
    return LLMEngine(EngineConfig.from_kwargs(**{**options, **overrides}))


def _weight_bytes_read(engine: LLMEngine) -> int:
    """Weight bytes one decode step of one sequence reads over all ranks (the embedding
    table is only looked up by row, so it does not count unless the LM head shares it;
    of a mixture of experts, only the routed top-k experts count)."""
    a = engine.arch
    embed = a.vocab_size * a.hidden_size
    return ((a.num_parameters(active_only=True) - (0 if a.tie_word_embeddings else embed))
            * _itemsize(engine))


def _itemsize(engine: LLMEngine) -> int:
    return engine.config.model.torch_dtype.itemsize


def _kv_itemsize(engine: LLMEngine) -> int:
    """Bytes per cached K or V value: the model's dtype, or 1 with an fp8 cache."""
    c = engine.config
    return resolve_kv_cache_dtype(c.cache.kv_cache_dtype, c.model.torch_dtype).itemsize


def run_latency(engine: LLMEngine, batch: int, input_len: int, output_len: int,
                bandwidth: float, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = engine.arch.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"lat-{seed}-{i}", [rng.randrange(vocab) for _ in range(input_len)],
                           params, stream=False)
    core = engine.core
    steps, contexts = [], []
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        if core.last_step_tokens == core.last_step_requests == batch:
            steps.append(dt)
            contexts.append(core.last_step_context)
    wall = time.perf_counter() - start
    if not steps:
        raise ValueError(f"no step decoded all {batch} sequences at once: the first ones "
                         f"finished their {output_len} tokens while the last were still in "
                         "prefill; raise the output length (or max_num_batched_tokens)")
    step = statistics.median(steps)
    kv_bytes = statistics.median(contexts) * engine.arch.kv_bytes_per_token * _kv_itemsize(engine)
    floor = (_weight_bytes_read(engine) + kv_bytes) / bandwidth
    return {"workload": "latency", "batch": batch, "input_len": input_len,
            "output_len": output_len, "decode_steps": len(steps), "median_step_ms": step * 1e3,
            "p90_step_ms": sorted(steps)[int(0.9 * (len(steps) - 1))] * 1e3,
            "tok_s": batch / step, "tok_s_per_seq": 1 / step, "roofline_step_ms": floor * 1e3,
            "roofline_ratio": floor / step, "wall_s": wall, "seed": seed}


def add_throughput_requests(engine: LLMEngine, num_prompts: int,
                            input_range: tuple[int, int] = (128, 1024),
                            output_range: tuple[int, int] = (128, 512),
                            seed: int = 0) -> tuple[int, int]:
    """Queues the throughput workload's requests (random token prompts, greedy, ignore
    EOS, final outputs only); returns (prompt tokens, output tokens) in all."""
    rng = random.Random(seed)
    vocab = engine.arch.vocab_size
    total_in = total_out = 0
    for i in range(num_prompts):
        n_in, n_out = rng.randint(*input_range), rng.randint(*output_range)
        total_in, total_out = total_in + n_in, total_out + n_out
        engine.add_request(f"tp-{seed}-{i}", [rng.randrange(vocab) for _ in range(n_in)],
                           SamplingParams(temperature=0.0, max_tokens=n_out, ignore_eos=True),
                           stream=False)
    return total_in, total_out


def run_throughput(engine: LLMEngine, num_prompts: int, input_range: tuple[int, int],
                   output_range: tuple[int, int], seed: int = 0) -> dict[str, Any]:
    total_in, total_out = add_throughput_requests(engine, num_prompts, input_range,
                                                  output_range, seed)
    peak_kv, steps = 0.0, 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        peak_kv = max(peak_kv, engine.core.kv.usage)
    wall = time.perf_counter() - start
    return {"workload": "throughput", "num_prompts": num_prompts, "input_tokens": total_in,
            "output_tokens": total_out, "wall_s": wall, "output_tok_s": total_out / wall,
            "total_tok_s": (total_in + total_out) / wall, "steps": steps,
            "peak_kv_usage": peak_kv, "preemptions": engine.core.scheduler.num_preemptions,
            "seed": seed}


def add_bench_parser(sub, add_engine_args) -> None:
    p = sub.add_parser("bench", help="latency, throughput and serving benchmarks")
    p.add_argument("workload", choices=["latency", "throughput", "serve"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-range", type=int, nargs=2, default=(128, 1024))
    p.add_argument("--output-range", type=int, nargs=2, default=(128, 512))
    p.add_argument("--json", default=None, help="write the results here")
    serve_options = add_serve_args(p)
    add_engine_args(p)
    p.set_defaults(func=run_bench, bench_parser=p, serve_options=serve_options)


LATENCY_OPTIONS = {"batch_size", "input_len", "output_len"}
REQUESTS_OPTIONS = {"num_prompts", "input_range", "output_range"}


def refuse_foreign_options(args: argparse.Namespace) -> None:
    """SystemExit naming each option given a value that the chosen workload would ignore:
    the serve options outside serve, the latency ones outside latency, the request set's
    outside throughput and serve, the engine's for serve (the server's engine is measured)."""
    from tessera.cli import engine_kwargs

    serve, engine, workload = args.serve_options, set(engine_kwargs(args)), args.workload
    applies = {"latency": LATENCY_OPTIONS | engine, "throughput": REQUESTS_OPTIONS | engine,
               "serve": REQUESTS_OPTIONS | serve | {"seed"}}[workload]
    foreign = (LATENCY_OPTIONS | REQUESTS_OPTIONS | serve | engine) - applies
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
    from tessera.cli import engine_kwargs

    refuse_foreign_options(args)
    if args.workload == "serve":  # the server's engine, not one of ours
        return run_serve_bench(args)

    kwargs = dict(engine_kwargs(args), skip_tokenizer_init=True)  # token ids in and out
    engine = LLMEngine(EngineConfig.from_kwargs(**kwargs))
    with frozen():  # start-up's objects out of the collector, as in a server (gc_tuning.py)
        return _run_workload(args, engine)


_WARM_UP_SEED = 99_991  # added to --seed: the warm-up's prompts differ from the timed ones


def _run_workload(args: argparse.Namespace, engine: LLMEngine) -> int:
    """--seed seeds the timed requests' prompts and lengths (and, through the engine, the
    dummy weights)."""
    device = engine.config.model.torch_device
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
    else:
        run_throughput(engine, 8, (16, 64), (8, 16), seed=_WARM_UP_SEED + args.seed)
        r = run_throughput(engine, args.num_prompts, tuple(args.input_range),
                           tuple(args.output_range), seed=args.seed)
        print(f"throughput  {r['num_prompts']} requests: {r['wall_s']:.1f} s, "
              f"{r['output_tok_s']:.0f} output tok/s, {r['total_tok_s']:.0f} total tok/s, "
              f"peak KV {r['peak_kv_usage']:.1%}, {r['preemptions']} preemptions")
    r.update(model=engine.config.model.model, dtype=str(engine.config.model.torch_dtype),
             device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
