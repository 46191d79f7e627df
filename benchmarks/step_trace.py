"""Where the throughput workload's wall time goes, phase by phase, step by step.

Runs the throughput workload (BENCHMARKS.md; Llama-3-8B shape, random bf16 weights) with
timers wrapped around each phase of an engine step, without changing the engine:
  schedule (scheduler) | prepare (worker input packing + H2D) | launch (forward kernels
  queued, or graph replay) | gpu_wait (synchronize after the forward: the GPU still busy)
  | sample (LM head, argmax/sampling, .tolist) | update (scheduler update) | outputs
  (LLMEngine output processing).
The timers synchronize once per step, so the trace runs with async scheduling off
(each phase on the critical path, as it is without overlap). `--profile-steps 300:306`
also records the CUDA kernels of those steps (torch.profiler) and prints the top ones.
Steps are grouped by kind: pure decode in a CUDA graph, pure decode eager (batch above
the largest graph), and mixed/prefill steps. Prints one table per group: steps, time per
step per phase, tokens per step; writes every step to --out as JSON.

    python benchmarks/step_trace.py --out $OUT/trace.json [--num-prompts 1000]
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import torch

import tessera.worker.model_runner as mr
from tessera.bench.offline import add_throughput_requests, random_weights_engine
from tessera.llm_engine import LLMEngine

PHASES = ["schedule", "prepare", "launch", "gpu_wait", "sample", "update", "outputs"]


class Tracer:
    def __init__(self):
        self.step: dict = {}
        self.steps: list[dict] = []
        self.kernels = ""

    def add(self, phase: str, dt: float) -> None:
        self.step[phase] = self.step.get(phase, 0.0) + dt


def instrument(engine: LLMEngine, tr: Tracer) -> None:
    core, runner = engine.core, engine.core.executor.runner
    sched = core.scheduler

    def timed(obj, name, phase):
        fn = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            r = fn(*a, **k)
            tr.add(phase, time.perf_counter() - t)
            return r
        setattr(obj, name, wrapper)

    timed(sched, "schedule", "schedule")
    timed(sched, "update_from_output", "update")
    prepare = mr.prepare_inputs

    def timed_prepare(*a, **k):
        t = time.perf_counter()
        r = prepare(*a, **k)
        tr.t_after_prepare = time.perf_counter()
        tr.add("prepare", tr.t_after_prepare - t)
        tr.step["graph"] = False
        return r
    mr.prepare_inputs = timed_prepare
    if runner.graphs is not None:
        graphs_run = runner.graphs.run

        def run(inputs):
            h = graphs_run(inputs)
            tr.step["graph"] = h is not None
            return h
        runner.graphs.run = run
    logits = runner.model.compute_logits

    def timed_logits(h):
        if not tr.step.get("_synced"):
            t = time.perf_counter()
            tr.add("launch", t - tr.t_after_prepare)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            tr.add("gpu_wait", time.perf_counter() - t)
            tr.step["_synced"] = True
            tr.t_after_sync = time.perf_counter()
        return logits(h)
    runner.model.compute_logits = timed_logits
    execute = runner.execute

    def timed_execute(so):
        t = time.perf_counter()
        r = execute(so)
        end = time.perf_counter()
        if tr.step.get("_synced"):
            tr.add("sample", end - tr.t_after_sync)
        tr.step["execute"] = end - t
        tr.step.update(tokens=so.total_num_scheduled_tokens, reqs=len(so.num_scheduled_tokens),
                       decodes=sum(1 for n in so.num_scheduled_tokens.values() if n == 1))
        return r
    runner.execute = timed_execute


def run(engine: LLMEngine, tr: Tracer, num_prompts: int, seed: int = 0,
        profile_steps: tuple[int, int] = (0, 0)) -> dict:
    _, out_tokens = add_throughput_requests(engine, num_prompts, seed=seed)
    tr.steps.clear()
    start = time.perf_counter()
    prof = None
    while engine.has_unfinished_requests():
        if profile_steps[1] and len(tr.steps) == profile_steps[0]:
            act = torch.profiler.ProfilerActivity
            prof = torch.profiler.profile(
                activities=[act.CUDA] if torch.cuda.is_available() else [act.CPU])
            prof.__enter__()
        if prof is not None and len(tr.steps) == profile_steps[1]:
            prof.__exit__(None, None, None)
            key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            tr.kernels = prof.key_averages().table(sort_by=key, row_limit=20)
            prof = None
        tr.step = {}
        t = time.perf_counter()
        engine.step()
        total = time.perf_counter() - t
        accounted = sum(tr.step.get(p, 0.0) for p in PHASES if p != "outputs")
        tr.step["outputs"] = total - accounted  # output processing and loop glue
        tr.step["total"] = total
        tr.step.pop("_synced", None)
        tr.steps.append(tr.step)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "output_tok_s": out_tokens / wall, "steps": len(tr.steps)}


def kind(s: dict) -> str:
    if s.get("tokens", 0) == s.get("decodes", -1):
        return "decode-graph" if s.get("graph") else "decode-eager"
    return "mixed/prefill"


def summarize(steps: list[dict]) -> str:
    groups = collections.defaultdict(list)
    for s in steps:
        if "tokens" in s:
            groups[kind(s)].append(s)
    lines = [f"{'kind':14} {'steps':>5} {'wall s':>7} {'tok/step':>8} "
             + " ".join(f"{p:>9}" for p in PHASES) + "   (ms per step, mean)"]
    for k, ss in sorted(groups.items()):
        wall = sum(s["total"] for s in ss)
        lines.append(f"{k:14} {len(ss):5d} {wall:7.2f} {statistics.mean(s['tokens'] for s in ss):8.0f} "
                     + " ".join(f"{1e3 * statistics.mean(s.get(p, 0.0) for s in ss):9.2f}"
                                for p in PHASES))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="trace.json")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--profile-steps", default="0:0", help="first:end steps to profile")
    args = ap.parse_args()
    first, end = (int(x) for x in args.profile_steps.split(":"))
    engine = random_weights_engine(args.model, max_num_seqs=args.max_num_seqs,
                                   max_num_batched_tokens=args.max_num_batched_tokens)
    engine.core.set_async_scheduling(False)
    tr = Tracer()
    instrument(engine, tr)
    run(engine, tr, 16, seed=99)  # warm-up
    result = run(engine, tr, args.num_prompts, profile_steps=(first, end))
    table = summarize(tr.steps)
    with open(args.out, "w") as f:
        json.dump({"result": result, "steps": tr.steps}, f)
    print(f"throughput (traced, a sync per step): {result['wall_s']:.1f} s, "
          f"{result['output_tok_s']:.0f} output tok/s, {result['steps']} steps")
    print(table)
    if tr.kernels:
        with open(args.out + ".kernels.txt", "w") as f:
            f.write(tr.kernels)
        window = tr.steps[first:end]
        print(f"CUDA kernels of steps {first}..{end - 1}: "
              + ", ".join(f"{kind(x)} {x.get('tokens', 0)} tok" for x in window))
        print(tr.kernels)


if __name__ == "__main__":
    main()
