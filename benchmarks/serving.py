"""The serving workload on one GPU: a real `tessera serve` over HTTP, Poisson arrivals.

Starts `python -m tessera.cli serve` (Llama-3-8B shape, random bf16 weights by default)
as a subprocess, waits for /health, sends 4 short requests to warm it up, then for each
request rate sends a fresh seeded workload (prompts 128-1024 tokens, outputs 128-512,
ignore EOS; tessera/bench/serving.py) and streams every answer; one table last
(throughput, TTFT / TPOT / ITL percentiles, goodput under TTFT <= 500 ms and TPOT <= 50
ms), full JSON to --out.

    python benchmarks/serving.py --out $OUT/serving.json [--rates 4,8,16,inf]
        [--num-prompts 200] [-- extra serve flags, e.g. --kv-cache-dtype fp8]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

from tessera.bench.serving import make_workload, run_serving, server_model, summarize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers.launch import start_server  # noqa: E402  (the tests' server launcher)


def shown_stats(stats: dict) -> dict:
    """A summary's statistics for printing: nan where there were no values (None)."""
    return {k: float("nan") if v is None else v for k, v in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="serving.json")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--rates", default="4,8,16,inf")
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--input-range", type=int, nargs=2, default=(128, 1024))
    ap.add_argument("--output-range", type=int, nargs=2, default=(128, 512))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--start-timeout", type=float, default=400.0)
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.input_range[1] + args.output_range[1] > args.max_model_len:
        ap.error(f"prompts up to {args.input_range[1]} + outputs up to {args.output_range[1]} "
                 f"tokens do not fit --max-model-len {args.max_model_len}")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve_args = [args.model, "--load-format", "dummy", "--dtype", args.dtype,
                  "--max-model-len", str(args.max_model_len), "--max-waiting", "4096", *extra]
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()
    server = start_server(out_dir, *serve_args, timeout=args.start_timeout)
    base = server.base_url
    results = {"serve_args": serve_args, "start_s": time.monotonic() - t0, "runs": []}
    try:
        import torch
        results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        card = server_model(base)
        warm = make_workload(4, (16, 64), (4, 8), card["vocab_size"], seed=99)
        asyncio.run(run_serving(base, card["id"], warm, float("inf")))  # first-request costs
        for i, rate_text in enumerate(args.rates.split(",")):
            rate = float(rate_text)
            workload = make_workload(args.num_prompts, tuple(args.input_range),
                                     tuple(args.output_range), card["vocab_size"], seed=i)
            records, duration = asyncio.run(run_serving(base, card["id"], workload, rate,
                                                        seed=i))
            r = summarize(records, duration)
            r["request_rate"] = rate_text
            shown = {k: shown_stats(r[k]) for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")}
            results["runs"].append(r)
            print(f"[{time.strftime('%H:%M:%S')}] rate {rate_text}: {r['completed']} done, "
                  f"{r['output_tok_s']:.0f} output tok/s, TTFT p50 {shown['ttft_ms']['p50']:.0f} "
                  f"ms, TPOT p50 {shown['tpot_ms']['p50']:.1f} ms", flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2, allow_nan=False)
    finally:
        server.stop()
    print(f"\n{results['device']}; `tessera serve {' '.join(serve_args)}` (up in "
          f"{results['start_s']:.0f} s); {args.num_prompts} requests per rate")
    print(f"{'rate':>5}{'done':>6}{'req/s':>7}{'out tok/s':>10}{'TTFT p50':>9}{'p99':>7}"
          f"{'TPOT p50':>9}{'p99':>6}{'ITL p50':>8}{'p99':>6}{'E2E p50':>8}{'goodput':>8}")
    for r in results["runs"]:
        t, p, i, e = (shown_stats(r[k]) for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"))
        print(f"{r['request_rate']:>5}{r['completed']:>6}{r['request_throughput']:>7.2f}"
              f"{r['output_tok_s']:>10.0f}{t['p50']:>9.0f}{t['p99']:>7.0f}{p['p50']:>9.1f}"
              f"{p['p99']:>6.1f}{i['p50']:>8.1f}{i['p99']:>6.1f}{e['p50'] / 1e3:>7.1f}s"
              f"{r['goodput']:>8.2f}")
    print("(ms unless marked; goodput: requests/s with TTFT <= 500 ms and TPOT <= 50 ms)")


if __name__ == "__main__":
    main()
