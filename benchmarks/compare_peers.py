"""One call on the GPU machine: HF transformers (eager) and Tessera on the same shape.

Llama-3-8B shape, random bf16 weights. Runs, in this order (the peer first, then freed):
  HF `generate` eager, batch 1, prompt 32, 64 new tokens (its ms/token is flat in length);
  Tessera latency (batch 1, prompt 32, 256 new), decode at batch 64 (prompt 1024, 128 new),
  both again with async scheduling off (sync_*: one step at a time, the CPU side of each
  step on the GPU's critical path), and the throughput workload (1000 requests, prompts
  128-1024, outputs 128-512).
Prints one table (tok/s, roofline ratio, ratio to HF and to gpt-fast's figures from
BENCHMARKS.md) and writes JSON to --out.

    python benchmarks/compare_peers.py --out $OUT/peers.json [--skip-throughput]
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from tessera.bench.offline import measure_bandwidth, random_weights_engine, run_latency, run_throughput
from tessera.gc_tuning import frozen
from tessera.models.shapes import NAMED_SHAPES

GPT_FAST = {1: 205.2, 64: 4667.0}  # tok/s on the H200, BENCHMARKS.md (2026-12-03)


def hf_latency(new_tokens: int = 64) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM
    s = NAMED_SHAPES["llama-3-8b"]
    cfg = LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                      intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_layers"],
                      num_attention_heads=s["num_heads"], num_key_value_heads=s["num_kv_heads"],
                      rope_theta=s["rope_theta"], max_position_embeddings=8192)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, 32), device="cuda")
    model.generate(ids, max_new_tokens=4, do_sample=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    torch.cuda.synchronize()
    tok_s = new_tokens / (time.perf_counter() - t)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return tok_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="peers.json")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    args = ap.parse_args()
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d")}
    results["hf_batch1_tok_s"] = None if args.skip_hf else hf_latency()
    bandwidth = measure_bandwidth(torch.device("cuda"))
    results["bandwidth_tb_s"] = bandwidth / 1e12
    engine = random_weights_engine(max_num_seqs=args.max_num_seqs,
                                   max_num_batched_tokens=args.max_num_batched_tokens)
    with frozen():  # as `tessera bench` and the server's processes do (gc_tuning.py)
        run_latency(engine, 2, 32, 8, bandwidth, seed=9)  # warm-up
        results["latency_b1"] = run_latency(engine, 1, 32, 256, bandwidth)
        results["decode_b64"] = run_latency(engine, 64, 1024, 128, bandwidth)
        engine.core.set_async_scheduling(False)  # the same model, one step at a time
        results["sync_latency_b1"] = run_latency(engine, 1, 32, 256, bandwidth)
        results["sync_decode_b64"] = run_latency(engine, 64, 1024, 128, bandwidth)
        engine.core.set_async_scheduling(True)
        if not args.skip_throughput:
            results["throughput"] = run_throughput(engine, args.num_prompts, (128, 1024),
                                                   (128, 512))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    hf = results["hf_batch1_tok_s"]
    print(f"\n{results['device']}, torch {results['torch']}, copy bandwidth "
          f"{results['bandwidth_tb_s']:.2f} TB/s")
    print(f"{'workload':<28}{'tok/s':>10}{'ms/step':>10}{'roofline':>10}{'vs gpt-fast':>12}"
          f"{'vs HF':>8}")
    for key, batch in (("latency_b1", 1), ("decode_b64", 64), ("sync_latency_b1", 1),
                       ("sync_decode_b64", 64)):
        r = results[key]
        vs_hf = f"{r['tok_s'] / hf:.1f}x" if hf and batch == 1 else "-"
        print(f"{key + f' (batch {batch})':<28}{r['tok_s']:>10.1f}{r['median_step_ms']:>10.2f}"
              f"{r['roofline_ratio']:>10.1%}{r['tok_s'] / GPT_FAST[batch]:>11.2f}x{vs_hf:>8}")
    if hf:
        print(f"{'HF eager (batch 1)':<28}{hf:>10.1f}")
    if "throughput" in results:
        r = results["throughput"]
        print(f"{'throughput (1000 req)':<28}{r['output_tok_s']:>10.0f}  output tok/s, "
              f"{r['total_tok_s']:.0f} total, {r['wall_s']:.1f} s, peak KV {r['peak_kv_usage']:.0%}")


if __name__ == "__main__":
    main()
