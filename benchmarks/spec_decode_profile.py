"""Where the time of a speculative decoding step goes, on the GPU: a profile of batch-1
steps of an engine over random weights (default: Llama-3-8B target, Llama-3.2-1B draft,
k = 4 drafts every step), printed as the operators' host and device totals, plus the
device's busy share of the wall time.

    python benchmarks/spec_decode_profile.py [--draft llama-3-8b] [--steps 40]
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
    ap.add_argument("--target", default="llama-3-8b")
    ap.add_argument("--draft", default="llama-3.2-1b")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    engine = random_weights_engine(args.target, speculative_model=args.draft,
                                   num_speculative_tokens=args.k, speculative_adaptive=False)
    params = SamplingParams(temperature=0, max_tokens=100_000 // 100, ignore_eos=True)
    engine.add_request("p", list(range(1, 33)), params, stream=False)
    for _ in range(10):  # prefill and warm steps
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="cpu_time_total", row_limit=args.rows))
    device_us = sum(e.self_device_time_total for e in events)
    print(f"{args.steps} steps in {wall * 1e3:.1f} ms ({wall / args.steps * 1e3:.2f} ms each); "
          f"device busy {device_us / 1e3:.1f} ms ({device_us / 1e6 / wall:.0%})")
    engine.abort_request(["p"])


if __name__ == "__main__":
    main()
