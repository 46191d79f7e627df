"""Where a decode step's GPU time goes: the kernels of steady decode steps, by name and in
order, from torch.profiler (CUDA activity; kernels inside CUDA graphs included).

`kernel_profile(engine, batch, input_len, steps)`: `batch` requests of random prompts of
`input_len` tokens are queued and stepped until every one is decoding; then `steps`
steps run under the profiler, and the requests are stepped to their end. Returns
{"steps", "wall_ms_per_step" (under the profiler: a little longer than without),
"busy_ms_per_step" (kernel time summed: the GPU's busy share of the step; under PDL
kernels overlap and a kernel's time includes its wait for the one before),
"by_name": [[name, ms per step, launches per step], ...] (largest first), "one_step":
[[name, us], ...] (the kernels of the middle profiled step in launch order, for reading
one layer's products; with async scheduling a step's slice starts with the step
before's sampling)}. The engine must run in this process (the uniproc
executor): a worker process's kernels are not seen. `print_profile(p, title)` prints the
top rows and the first kernels of one step.

Used by benchmarks/quant_speed.py --profile (issue 20: what stands between a method's
step and the roofline of its bytes).
"""
from __future__ import annotations

import random
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tessera.sampling_params import SamplingParams


def _decoding(core, batch: int, prompt_before: int) -> bool:
    return core.last_step_requests == batch and core.prompt_tokens_total == prompt_before


def kernel_profile(engine, batch: int, input_len: int, steps: int = 16, seed: int = 3) -> dict:
    rng = random.Random(seed)
    vocab, core = engine.arch.vocab_size, engine.core
    params = SamplingParams(temperature=0.0, max_tokens=steps + 64, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"prof-{seed}-{i}", [rng.randrange(vocab) for _ in range(input_len)],
                           params, stream=False)
    for _ in range(10_000):  # until two steps in a row decode the whole batch
        before = core.prompt_tokens_total
        engine.step()
        if _decoding(core, batch, before):
            before = core.prompt_tokens_total
            engine.step()
            if _decoding(core, batch, before):
                break
    else:
        raise RuntimeError(f"no two steps in a row decoded all {batch} requests")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    while engine.has_unfinished_requests():
        engine.step()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and e.device_time > 0]
    kernels.sort(key=lambda e: e.time_range.start)
    totals: dict[str, list[float]] = {}
    for e in kernels:
        t = totals.setdefault(e.name, [0.0, 0])
        t[0] += e.device_time
        t[1] += 1
    by_name = sorted(([n, us / steps / 1e3, c / steps] for n, (us, c) in totals.items()),
                     key=lambda r: -r[1])
    per_step = len(kernels) // steps
    middle = kernels[per_step * (steps // 2): per_step * (steps // 2 + 1)]
    return {"steps": steps, "batch": batch, "input_len": input_len,
            "wall_ms_per_step": wall / steps * 1e3,
            "busy_ms_per_step": sum(e.device_time for e in kernels) / steps / 1e3,
            "by_name": by_name, "one_step": [[e.name, e.device_time] for e in middle]}


def print_profile(p: dict, title: str, top: int = 14, first: int = 24) -> None:
    print(f"\n{title}: batch {p['batch']}, {p['steps']} steps: wall {p['wall_ms_per_step']:.3f} "
          f"ms/step, kernels {p['busy_ms_per_step']:.3f} ms/step", flush=True)
    for name, ms, count in p["by_name"][:top]:
        print(f"  {ms:8.3f} ms {count:6.1f}x  {name[:90]}")
    print("  one step, in order (us):")
    for name, us in p["one_step"][:first]:
        print(f"    {us:8.1f}  {name[:90]}")
