"""Is the GPU or the CPU the bottleneck of the throughput workload, with async scheduling?

Runs the throughput workload (BENCHMARKS.md; Llama-3-8B shape, random bf16 weights) as
the engine normally runs it (two steps in flight) and records two CUDA events around each
step's device work (`ModelRunner.submit`), with no synchronization added. On the device's
timeline, for step i: busy_i = end_i - start_i (its kernels, plus any gaps where the GPU
waited for the CPU to launch the next kernel) and idle_i = start_i - end_(i-1) (the GPU
had finished step i-1 and nothing was queued: the CPU was late). Also sums the time the
CPU blocked waiting for tokens (`collect`). Prints per step kind: steps, busy, idle;
then, for the steps of --profile-steps, the kernels' own time against their busy time
(the rest: the GPU waiting for launches inside a step), and the allocator's retries and
device frees (each cudaFree synchronizes the device).

    python benchmarks/gpu_idle.py --out $OUT/idle.json [--latency --profile-steps 0:0]
"""
from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from tessera.bench.offline import add_throughput_requests, random_weights_engine, run_latency
from tessera import gc_tuning
from tessera.kernels.jit_variants import compiled_keys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="idle.json")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--profile-steps", default="200:206", help="first:end; 0:0 for none")
    ap.add_argument("--trace", default="", help="write the profiled steps' Chrome trace here")
    ap.add_argument("--latency", action="store_true",
                    help="the latency workload instead (batch 1, prompt 32, 256 new)")
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--no-gc-freeze", action="store_true",
                    help="leave start-up's objects to Python's collector (tessera/gc_tuning.py)")
    ap.add_argument("--gc-full-every", type=int, default=0,
                    help="with the freeze: middle-generation collections per full one "
                         "(default gc_tuning.FULL_EVERY; Python's own is 10)")
    args = ap.parse_args()
    first, last = (int(x) for x in args.profile_steps.split(":"))
    if args.latency:
        engine = random_weights_engine(args.model, max_num_seqs=64, max_num_batched_tokens=4096,
                                       kv_cache_dtype=args.kv_cache_dtype)
        run_latency(engine, 2, 32, 8, 1.0, seed=9)  # warm-up
    else:
        engine = random_weights_engine(args.model, max_num_seqs=args.max_num_seqs,
                                       max_num_batched_tokens=args.max_num_batched_tokens,
                                       kv_cache_dtype=args.kv_cache_dtype)
    if not args.no_gc_freeze:
        gc_tuning.FULL_EVERY = args.gc_full_every or gc_tuning.FULL_EVERY
        gc_tuning.freeze_after_startup()  # as `tessera bench` and the server's processes do
    gc_meter = gc_tuning.PauseMeter().start()
    runner = engine.core.executor.runner
    marks: list[tuple[torch.cuda.Event, torch.cuda.Event, str, int]] = []
    cpu: list[tuple[float, float]] = []  # host clock: submit's start and end, per step
    waited = [0.0]
    submit, resolve = runner.submit, runner._resolve

    def timed_submit(so):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.perf_counter()
        start.record()
        submit(so)
        end.record()
        cpu.append((t, time.perf_counter()))
        n = so.num_scheduled_tokens
        kind = "empty" if not n else ("decode" if len(n) == sum(n.values()) else "mixed")
        marks.append((start, end, kind, sum(n.values())))

    def timed_resolve(step):
        t = time.perf_counter()
        out = resolve(step)
        waited[0] += time.perf_counter() - t
        return out
    runner.submit, runner._resolve = timed_submit, timed_resolve

    compiled_before = compiled_keys()
    start, prof, kernel_ms = time.perf_counter(), None, 0.0
    if args.latency:
        out_tokens = 256
        run_latency(engine, 1, 32, out_tokens, 1.0)
    else:
        _, out_tokens = add_throughput_requests(engine, args.num_prompts)
    while engine.has_unfinished_requests():
        if last > first and len(marks) == first and prof is None:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
            window = len(marks)
        engine.step()
        if prof is not None and len(marks) >= last and not kernel_ms:
            torch.cuda.synchronize()
            window = (window, len(marks))
            prof.__exit__(None, None, None)
            if args.trace:
                prof.export_chrome_trace(args.trace)
            averages = prof.key_averages()
            kernel_ms = sum(e.self_device_time_total for e in averages) / 1e3
            top = sorted(((e.key[:70], e.self_device_time_total / 1e3) for e in averages
                          if e.self_device_time_total > 0), key=lambda r: -r[1])[:12]
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    gc_pauses = gc_meter.stop()
    mem = torch.cuda.memory_stats()

    busy, idle = collections.Counter(), collections.Counter()
    count, tokens = collections.Counter(), collections.Counter()
    for i, (s, e, kind, n) in enumerate(marks):
        busy[kind] += s.elapsed_time(e) / 1e3
        if i:
            idle[kind] += marks[i - 1][1].elapsed_time(s) / 1e3
        count[kind] += 1
        tokens[kind] += n
    res = {"wall_s": wall, "output_tok_s": out_tokens / wall, "cpu_waited_s": waited[0],
           "gc_frozen": not args.no_gc_freeze, "gc_pauses": gc_pauses,
           "kinds": {k: {"steps": count[k], "busy_s": busy[k], "idle_before_s": idle[k],
                         "tokens_per_step": tokens[k] / count[k]} for k in count}}
    if kernel_ms:
        a, b = window
        res["profiled_steps"] = {
            "steps": [m[2] + f" {m[3]}" for m in marks[a:b]], "kernel_ms": kernel_ms,
            "busy_ms": sum(s.elapsed_time(e) for s, e, _, _ in marks[a:b]), "top_kernels_ms": top}
    res["steps"] = [  # per step: kind, tokens, GPU busy and idle before it, CPU submit ms
        dict(kind=kind, tokens=n, busy_ms=s.elapsed_time(e),
             idle_ms=marks[i - 1][1].elapsed_time(s) if i else 0.0,
             submit_ms=(cpu[i][1] - cpu[i][0]) * 1e3,
             since_last_submit_ms=(cpu[i][0] - cpu[i - 1][1]) * 1e3 if i else 0.0)
        for i, (s, e, kind, n) in enumerate(marks)]
    res["compiled_during_run"] = {
        name: [k for k in keys if k not in compiled_before.get(name, [])]
        for name, keys in compiled_keys().items()
        if set(keys) - set(compiled_before.get(name, []))}
    res["allocator"] = {k: mem.get(k, 0) for k in ("num_alloc_retries", "num_device_alloc",
                                                   "num_device_free", "num_sync_all_streams")}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"{'latency' if args.latency else 'throughput'} (async scheduling): {wall:.1f} s, "
          f"{out_tokens / wall:.0f} output tok/s; CPU waited for tokens {waited[0]:.2f} s")
    print(f"{'kind':8} {'steps':>6} {'tok/step':>9} {'GPU busy s':>11} {'GPU idle s':>11}")
    for k in sorted(count):
        print(f"{k:8} {count[k]:6d} {tokens[k] / count[k]:9.0f} {busy[k]:11.2f} {idle[k]:11.2f}")
    if "profiled_steps" in res:
        p = res["profiled_steps"]
        print(f"steps {p['steps']}: kernels {p['kernel_ms']:.1f} ms of {p['busy_ms']:.1f} ms busy")
        for name, ms in p["top_kernels_ms"]:
            print(f"  {ms:9.1f} ms  {name}")
    print("allocator:", res["allocator"])
    print(f"garbage collections (start-up objects {'frozen' if res['gc_frozen'] else 'not frozen'}"
          "), by generation:", {g: f"{p['count']} x, {p['total_ms']:.0f} ms in all, longest "
                                   f"{p['max_ms']:.0f} ms" for g, p in gc_pauses.items()})
    print("Triton kernels compiled during the run:",
          {k: len(v) for k, v in res["compiled_during_run"].items()} or "none")


if __name__ == "__main__":
    main()
