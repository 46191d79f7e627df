"""The CPU side of one decode step at large batch, with no model (runs anywhere).

500 running requests of 900-token prompts: times the scheduler, the worker's input
preparation (flat ids, positions, slots, block tables, one packed copy), the scheduler's
update and the output processing, per pure-decode step (median). On a GPU these run
while the device waits, unless overlapped, so they bound large-batch throughput.

    python benchmarks/cpu_step_overhead.py [--batch 500]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tessera.config import SchedulerConfig
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.output_processor import OutputProcessor
from tessera.engine.protocol import ModelRunnerOutput
from tessera.engine.request import Request
from tessera.engine.scheduler import Scheduler
from tessera.sampling_params import SamplingParams
from tessera.worker.input_batch import RequestState, prepare_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--prompt-len", type=int, default=900)
    args = ap.parse_args()
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8192, max_num_seqs=args.batch),
                      KVCacheManager(args.batch * 90, 16), 4096)
    outputs = OutputProcessor(None)
    states: dict[str, RequestState] = {}
    for i in range(args.batch):
        p = SamplingParams(max_tokens=400, ignore_eos=True, temperature=0)
        req = Request(f"r{i}", list(range(i, i + args.prompt_len)), p, (2,))
        sched.add_request(req)
        outputs.add_request(req.request_id, None, req.prompt_token_ids, [(req.request_id, p)])
    times: dict[str, list[float]] = {"schedule": [], "prepare": [], "update": [], "outputs": []}
    for _ in range(90):
        t0 = time.perf_counter()
        so = sched.schedule()
        t1 = time.perf_counter()
        for new in so.new_requests:
            states[new.request_id] = RequestState(
                new.request_id, list(new.token_ids), new.num_prompt_tokens, new.params,
                list(new.block_ids), new.num_computed_tokens, 0)
        for c in so.cached_requests:
            st = states[c.request_id]
            st.block_ids.extend(c.new_block_ids)
            start = st.num_computed_tokens
            st.token_ids[start:start + len(c.new_token_ids)] = c.new_token_ids
        t2 = time.perf_counter()
        prepare_inputs(states, so.num_scheduled_tokens, 16, torch.device("cpu"), True)
        t3 = time.perf_counter()
        for rid, n in so.num_scheduled_tokens.items():
            states[rid].num_computed_tokens += n
        sampled = {rid: 5 for rid in so.num_scheduled_tokens
                   if states[rid].num_computed_tokens == len(states[rid].token_ids)}
        t4 = time.perf_counter()
        core_out = sched.update_from_output(so, ModelRunnerOutput(sampled, {}, {}))
        t5 = time.perf_counter()
        outputs.process(core_out)
        t6 = time.perf_counter()
        if so.total_num_scheduled_tokens == len(so.num_scheduled_tokens) == args.batch:
            for key, dt in zip(times, (t1 - t0, t3 - t2, t5 - t4, t6 - t5)):
                times[key].append(dt)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"batch {args.batch}, {len(times['schedule'])} decode steps, ms per step: "
          + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
          + f"; total {sum(med.values()):.2f}")


if __name__ == "__main__":
    main()
