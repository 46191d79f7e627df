"""The KV host tier on a multi-turn chat workload (issue 23's figures), one call.

Random weights of a named shape (default Llama-3-8B, bf16), a device KV cache held to
--device-tokens (fewer than the conversations' histories), greedy decoding. --convs
conversations run --turns turns: each turn every conversation sends its whole history
(the previous prompts and replies) plus --user new tokens, all at once, and gets --reply
tokens back (the history then takes random tokens of the reply's length: the same in
both runs). The same workload runs without and with --host-gb of KV host tier. Reported per run: mean and p90 TTFT of
the turns after the first, output and total tokens per second, prompt tokens computed
(recomputation included), tokens found in each tier, and bytes copied each way.

    python benchmarks/kv_host_tier.py --out $OUT/kv_tier.json
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time

import torch

from tessera.bench.offline import random_weights_engine
from tessera.sampling_params import SamplingParams


def run(args, host_gb: float) -> tuple[dict, list]:
    engine = random_weights_engine(args.model, max_model_len=8192,
                                   num_blocks=args.device_tokens // 16,
                                   kv_offload_gb=host_gb)
    rng = random.Random(0)
    vocab = engine.arch.vocab_size
    histories = [[rng.randrange(vocab) for _ in range(args.user)] for _ in range(args.convs)]
    params = SamplingParams(temperature=0.0, max_tokens=args.reply, ignore_eos=True)
    ttfts, replies, start = [], [], time.perf_counter()
    out_tokens = total_tokens = 0
    for turn in range(args.turns):
        sent, first = {}, {}
        for i, h in enumerate(histories):
            rid = f"c{i}-t{turn}"
            sent[rid] = time.perf_counter()
            engine.add_request(rid, list(h), params, stream=True)
            total_tokens += len(h)
        done: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.request_id not in first and o.outputs[0].token_ids:
                    first[o.request_id] = time.perf_counter()
                if o.finished:
                    done[o.request_id] = list(o.outputs[0].token_ids)
        if turn:
            ttfts += [first[r] - sent[r] for r in sent]
        replies.append([done[f"c{i}-t{turn}"] for i in range(args.convs)])
        for h in histories:  # the reply in the history: random tokens of its length, the
            # same in both runs (bf16 replies of a found and a recomputed prefix may differ)
            h += [rng.randrange(vocab) for _ in range(args.reply + args.user)]
            out_tokens += args.reply
    wall = time.perf_counter() - start
    s = engine.stats()
    ttfts.sort()
    row = {"host_gb": host_gb, "wall_s": wall, "ttft_mean_ms": statistics.mean(ttfts) * 1e3,
           "ttft_p90_ms": ttfts[int(0.9 * (len(ttfts) - 1))] * 1e3,
           "output_tok_s": out_tokens / wall, "total_tok_s": (total_tokens + out_tokens) / wall,
           "prompt_tokens_computed": s["prompt_tokens"], "prompt_tokens_sent": total_tokens,
           "device_hit_tokens": s["prefix_hit_tokens"] - s["host_hit_tokens"],
           "host_hit_tokens": s["host_hit_tokens"], "gib_to_host": s["kv_bytes_to_host"] / 2**30,
           "gib_to_device": s["kv_bytes_to_device"] / 2**30, "preemptions": s["preemptions"],
           "device_kv_tokens": engine.core.num_blocks * 16}
    engine.shutdown()
    engine = None
    gc.collect()
    torch.cuda.empty_cache()
    return row, replies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--convs", type=int, default=48)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--user", type=int, default=512)
    ap.add_argument("--reply", type=int, default=64)
    ap.add_argument("--device-tokens", type=int, default=32768)
    ap.add_argument("--host-gb", type=float, default=48.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    plain, _ = run(args, 0.0)
    rows.append(plain)
    print(json.dumps(plain), flush=True)
    tiered, _ = run(args, args.host_gb)
    rows.append(tiered)
    print(json.dumps(tiered), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(f"\n{'host GiB':>8} {'TTFT ms':>9} {'p90 ms':>9} {'out tok/s':>10} {'tot tok/s':>10} "
          f"{'computed':>9} {'dev hits':>9} {'host hits':>9} {'GiB out':>8} {'GiB back':>8}")
    for r in rows:
        print(f"{r['host_gb']:8.0f} {r['ttft_mean_ms']:9.1f} {r['ttft_p90_ms']:9.1f} "
              f"{r['output_tok_s']:10.0f} {r['total_tok_s']:10.0f} "
              f"{r['prompt_tokens_computed']:9d} {r['device_hit_tokens']:9d} "
              f"{r['host_hit_tokens']:9d} {r['gib_to_host']:8.2f} {r['gib_to_device']:8.2f}")


if __name__ == "__main__":
    main()
