"""Tensor parallelism on the GPUs of one host, in one call.

1. Correctness: a tiny random Llama, bf16, TP=1 vs TP=N greedy tokens (first divergence
   reported; bf16 all-reduce order may flip a near-tie late).
2. Scaling: Llama-3-8B shape, random bf16 weights, batch-1 decode tok/s at TP=1 and TP=N,
   with the bandwidth each GPU sustains (weight + KV bytes per GPU per step / step time).

    python benchmarks/multi_gpu_tp.py --tp 2 --out $OUT/tp.json
"""
from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time

import torch

from tessera import LLM, SamplingParams
from tessera.bench.offline import _weight_bytes_read, random_weights_engine, run_latency
from tessera.distributed.topology import gpu_links


def correctness(tp: int) -> list[int]:
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                   num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=4, initializer_range=0.08)
    folder = tempfile.mkdtemp()
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    prompts = [[1, 2, 3, 4], list(range(10, 70)), [7] * 9]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = {}
    for n in (1, tp):
        llm = LLM(folder, skip_tokenizer_init=True, dtype="bfloat16", tensor_parallel_size=n,
                  gpu_memory_utilization=0.3, enforce_eager=True)
        outs[n] = [o.outputs[0].token_ids for o in llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params)]
        if n > 1:
            llm.engine.executor.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    same = []
    for a, b in zip(outs[1], outs[tp]):
        same.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)))
    return same


def scaling(tp: int) -> dict:
    results = {}
    for n in (1, tp):
        engine = random_weights_engine(tensor_parallel_size=n, max_num_seqs=64,
                                       gpu_memory_utilization=0.45)
        run_latency(engine, 1, 32, 8, 3.0e12, seed=5)
        r = run_latency(engine, 1, 32, 64, 3.0e12)
        per_gpu = (_weight_bytes_read(engine) / n) / (r["median_step_ms"] / 1e3)
        results[f"tp{n}"] = {"tok_s": r["tok_s"], "median_step_ms": r["median_step_ms"],
                             "bandwidth_per_gpu_tb_s": per_gpu / 1e12}
        if n > 1:
            engine.executor.shutdown()
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--out", default="tp.json")
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
           "links": {f"{i}-{j}": k for (i, j), k in gpu_links(args.tp).items()},
           "date": time.strftime("%Y-%m-%d")}
    res["identical_tokens_tp1_vs_tp"] = correctness(args.tp)
    print("identical greedy tokens TP=1 vs TP=%d (of 32):" % args.tp,
          res["identical_tokens_tp1_vs_tp"], flush=True)
    res["scaling"] = scaling(args.tp)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
