"""Where a large-batch decode step spends its GPU time (torch.profiler, CUDA kernels).

Llama-3-8B shape, random bf16 weights: `--batch` requests with `--prompt-len` prompts are
prefilled, then a few pure-decode steps are profiled; prints the kernels by total CUDA
time and the step time, and writes the table to --out.

    python benchmarks/profile_decode.py --batch 256 --prompt-len 1000 --out $OUT/prof.txt
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tessera.bench.offline import random_weights_engine
from tessera.sampling_params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="prof.txt")
    args = ap.parse_args()
    engine = random_weights_engine(max_num_seqs=args.batch, max_num_batched_tokens=8192,
                                   enforce_eager=True)  # kernels show one by one in the profile
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(f"p{i}", [(i * 7 + j) % 128000 for j in range(args.prompt_len)],
                           params)
    core = engine.core
    while not (core.last_step_tokens == core.last_step_requests == args.batch):
        engine.step()
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    with open(args.out, "w") as f:
        f.write(table)
    kv_gb = args.batch * (args.prompt_len + 8) * engine.arch.kv_bytes_per_token * 2 / 1e9
    print(f"batch {args.batch}, context ~{args.prompt_len}: step {min(times) * 1e3:.1f} ms "
          f"(KV read per step {kv_gb:.1f} GB -> floor {kv_gb / 3.0:.1f} ms at 3 TB/s + weights "
          f"5.0 ms)")
    print(table)


if __name__ == "__main__":
    main()
