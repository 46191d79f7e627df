"""First decode figures: Llama-3-8B shape, random bf16 weights, one GPU.

Drives the engine step by step and times every step (CUDA synchronized by the sampled
token read-back). A decode step is one where every scheduled request computes exactly
one token. Reports the median decode step, tok/s, and the ratio to the bandwidth
roofline: (weight bytes read + KV bytes read) / measured copy bandwidth.

    python benchmarks/decode_first.py --batch 1 --prompt-len 32 --new-tokens 256
    python benchmarks/decode_first.py --batch 64 --prompt-len 1024 --new-tokens 128
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tessera.config import EngineConfig
from tessera.llm_engine import LLMEngine
from tessera.sampling_params import SamplingParams

BANDWIDTH = 3.00e12  # bytes/s, H100 80GB HBM3 device-to-device copy, measured (BENCHMARKS.md)


def run(engine: LLMEngine, batch: int, prompt_len: int, new_tokens: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    gen = torch.Generator().manual_seed(0)
    vocab = engine.arch.vocab_size
    for i in range(batch):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=gen).tolist()
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
    decode_ms, decode_ctx = [], []
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t0
        last = engine.core.last_step_tokens
        if last == engine.core.last_step_requests == batch:
            decode_ms.append(dt * 1e3)
            decode_ctx.append(engine.core.last_step_context)
    wall = time.perf_counter() - start
    step_ms = statistics.median(decode_ms)
    a = engine.arch
    weight_bytes = engine.executor.runner.weight_bytes - a.vocab_size * a.hidden_size * 2 * (
        0 if a.tie_word_embeddings else 1)  # the embedding table is not read whole
    kv_bytes = statistics.median(decode_ctx) * a.kv_bytes_per_token * 2  # bf16
    floor_ms = (weight_bytes + kv_bytes) / BANDWIDTH * 1e3
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "decode_steps": len(decode_ms), "median_step_ms": step_ms,
            "decode_tok_s": batch / step_ms * 1e3, "per_seq_tok_s": 1e3 / step_ms,
            "roofline_step_ms": floor_ms, "roofline_ratio": floor_ms / step_ms,
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--runs", default="1x32x256,64x1024x128",
                    help="batch x prompt_len x new_tokens, comma separated")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = EngineConfig.from_kwargs(model=args.model, load_format="dummy", dtype="bfloat16",
                                   max_model_len=4096, skip_tokenizer_init=True)
    engine = LLMEngine(cfg)
    results = []
    for spec in args.runs.split(","):
        b, p, n = (int(x) for x in spec.split("x"))
        run(engine, min(b, 2), p, 8)  # warm-up
        results.append(run(engine, b, p, n))
    print(f"{'batch':>5} {'prompt':>6} {'step ms':>8} {'tok/s':>8} {'floor ms':>8} {'roofline':>8}")
    for r in results:
        print(f"{r['batch']:>5} {r['prompt_len']:>6} {r['median_step_ms']:>8.2f} "
              f"{r['decode_tok_s']:>8.1f} {r['roofline_step_ms']:>8.2f} {r['roofline_ratio']:>8.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
