"""Where a constrained step's host time goes: llguidance matchers at the states a
sampled JSON output reaches, one step of a batch at a time.

For a schema (default: benchmarks/structured_output_overhead.py's person record), B
matchers walk by uniformly random allowed tokens (seeded; a random-weights model samples
much like this) for --steps steps; each step times feeding the tokens (`consume_token`
per row) and filling the B masks, serially and with llguidance's executor at several
thread counts, and through Tessera's xgrammar route (xgrN: N of its threads). Prints the
median microseconds per step.

    python benchmarks/grammar_fill_profile.py --tokenizer DIR [--batch 64] [--steps 100]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import llguidance
import llguidance.hf
import llguidance.numpy as lgn
import numpy as np
from transformers import AutoTokenizer

from structured_output_overhead import PERSON

GRAMMAR, FAMILIES = None, 1


def allowed_ids(mask_row: np.ndarray, vocab: int) -> np.ndarray:
    bits = np.unpackbits(mask_row.view(np.uint8), bitorder="little")[:vocab]
    return np.flatnonzero(bits)


def walk(template, tok, hf, vocab: int, batch: int, steps: int, executor
         ) -> tuple[list[float], list[float]]:
    """The same seeded walk of `batch` fresh matchers: (fill seconds, consume seconds)
    per step; executor None fills row by row."""
    families = [template] + [llguidance.LLMatcher(tok, GRAMMAR, log_level=0)
                             for _ in range(max(FAMILIES, 1) - 1)]
    matchers = [families[row % len(families)].deep_copy() if FAMILIES else
                llguidance.LLMatcher(tok, GRAMMAR, log_level=0) for row in range(batch)]
    mask = lgn.allocate_token_bitmask(batch, vocab)
    rng = random.Random(0)
    fill, consume = [], []
    for _ in range(steps):
        start = time.perf_counter()
        if executor is None:
            for row, m in enumerate(matchers):
                lgn.fill_next_token_bitmask(m, mask, row)
        else:
            lgn.fill_next_token_bitmask_par(executor, list(zip(matchers, range(batch))), mask)
        fill.append(time.perf_counter() - start)
        picks = []
        for row in range(batch):
            ids = allowed_ids(mask[row], vocab)
            picks.append(int(ids[rng.randrange(len(ids))]) if len(ids) else hf.eos_token_id)
        start = time.perf_counter()
        for m, t in zip(matchers, picks):
            if m.is_stopped() or t == hf.eos_token_id:
                m.reset()
            else:
                m.consume_token(t)
        consume.append(time.perf_counter() - start)
    return fill, consume


def walk_xgrammar(hf, vocab: int, batch: int, steps: int, threads: int) -> list[float]:
    """The same walk through Tessera's xgrammar route (structured/xgrammar_backend.py):
    fill seconds per step on `threads` of xgrammar's threads."""
    import xgrammar

    from tessera.structured.params import StructuredOutputsParams
    from tessera.structured.xgrammar_backend import XGrammarCompiler, fill_masks
    compiler = XGrammarCompiler(hf, vocab, [hf.eos_token_id], threads)
    params = StructuredOutputsParams(json=PERSON)
    matchers = [compiler.matcher(params) for _ in range(batch)]
    pool = xgrammar.BatchGrammarMatcher(max_threads=threads)
    mask = lgn.allocate_token_bitmask(batch, vocab)
    rng, fill = random.Random(0), []
    for _ in range(steps):
        start = time.perf_counter()
        fill_masks(pool, [(m, row) for row, m in enumerate(matchers)], mask)
        fill.append(time.perf_counter() - start)
        for row, m in enumerate(matchers):
            ids = allowed_ids(mask[row], vocab)
            t = int(ids[rng.randrange(len(ids))]) if len(ids) else hf.eos_token_id
            if t == hf.eos_token_id or m.inner.is_terminated():
                matchers[row] = compiler.matcher(params)
            else:
                m.consume_token(t)
    return fill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", default="1,4,8,16")
    ap.add_argument("--families", type=int, default=1,
                    help="rows are copies of this many independently built matchers "
                         "(copies share their lazily built caches); 0: one per row")
    args = ap.parse_args()
    hf = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = len(hf)
    tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab, eos_token=[hf.eos_token_id])
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        PERSON, defaults={"whitespace_flexible": False})
    template = llguidance.LLMatcher(tok, grammar, log_level=0)
    global GRAMMAR, FAMILIES
    GRAMMAR, FAMILIES = grammar, args.families
    executors = {int(t): llguidance.LLExecutor(num_threads=int(t))
                 for t in args.threads.split(",") if int(t) <= (os.cpu_count() or 1)}
    times: dict[str, list[float]] = {}
    for name, ex in [("serial", None), *((f"par{t}", e) for t, e in executors.items())]:
        fill, consume = walk(template, tok, hf, vocab, args.batch, args.steps, ex)
        times[name] = fill
        times.setdefault("consume", consume)
    for t in executors:  # Tessera's xgrammar route, for the schemas it serves
        times[f"xgr{t}"] = walk_xgrammar(hf, vocab, args.batch, args.steps, t)
    print(f"batch {args.batch}, {args.steps} steps, {os.cpu_count()} CPUs; "
          "median (p90) microseconds per step")
    for name, values in times.items():
        values = sorted(values)
        print(f"{name:>8} {statistics.median(values) * 1e6:9.0f} "
              f"({values[int(0.9 * len(values))] * 1e6:.0f})")


if __name__ == "__main__":
    main()
