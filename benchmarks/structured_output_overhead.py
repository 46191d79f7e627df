"""Structured outputs' cost on the GPU (issue 22's overhead figures), in one call.

Random weights of a named shape (default SmolLM2-135M: the fastest forward, so the
hardest case for any host-side cost) with a real tokenizer (`--tokenizer`: the folder
of the shape's vocabulary, e.g. the default model's exported tokenizer). For each batch
size of --batches, the same decode runs twice with sampling at temperature 1 (seeded):
  plain       no grammar (ignore_eos, so every sequence runs the full length);
  json        every request with a JSON schema (an array of at least 100 nested person
              records: enums, bounded integers, patterns, strings; the grammar cannot
              end before max_tokens, so the lengths match plain's).
First, 16 sampled single records must all parse with every field (a check that the
masks reach the sampler on the device); the library that made the masks is reported
(xgrammar unless it is off or read the vocabulary apart: the worker's log says why).
Reported per batch: the median wall time of a decode step with the whole batch in it,
tokens per second from it, the overhead, and the
median host time of one share of a step's masks (worker/grammar_masks.py: the rows are
shared among helper threads): feeding the matchers the last tokens (advance), filling
(fill: in the background, while the engine works on the step before, unless
--fill-in-place; --feed-in-background feeds there too), and the step loop's wait for a
background fill (wait).

    python benchmarks/structured_output_overhead.py --tokenizer DIR --out $OUT/so.json
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch

from tessera.bench.offline import random_weights_engine
from tessera.sampling_params import SamplingParams
from tessera.structured import grammar
from tessera.worker import grammar_masks

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,10}\\.(com|org|net)$"},
    "role": {"enum": ["admin", "editor", "viewer", "guest"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    "address": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["city", "zip"], "additionalProperties": False}},
    "required": ["name", "age", "email", "role", "tags", "address"],
    "additionalProperties": False}
SCHEMA = {"type": "array", "items": PERSON, "minItems": 100}


def decode_steps(engine, batch: int, params: list[SamplingParams], input_len: int,
                 tag: str) -> list[float]:
    rng = random.Random(batch)
    vocab = engine.arch.vocab_size
    for i in range(batch):
        engine.add_request(f"{tag}-{batch}-{i}", [rng.randrange(vocab) for _ in
                                                   range(input_len)], params[i], stream=False)
    core, steps = engine.core, []
    while engine.has_unfinished_requests():
        prompt = core.prompt_tokens_total
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        if core.last_step_requests == batch and core.prompt_tokens_total == prompt:
            steps.append(dt)
    return steps[2:]  # the first full steps may still overlap prompt work


def check_outputs(engine, batch: int = 16) -> int:
    """How many of `batch` sampled single records parse and carry their fields (random
    weights: the grammar alone makes them valid)."""
    params = SamplingParams(temperature=1.0, max_tokens=400,
                            structured_outputs={"json": PERSON})
    rng = random.Random(0)
    for i in range(batch):
        engine.add_request(f"check-{i}", [rng.randrange(1000) for _ in range(16)],
                           params.clone(seed=i), stream=False)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.finished]
    good = 0
    for o in outs:
        try:
            record = json.loads(o.outputs[0].text)
            good += set(record) == set(PERSON["required"]) and 0 <= record["age"] <= 120
        except ValueError:
            pass
    return good


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument("--default-slices", action="store_true",
                    help="llguidance's default slices (A/B of structured/grammar.SLICES)")
    ap.add_argument("--modes", default="plain,json",
                    help="which decodes run per batch (overhead needs both)")
    ap.add_argument("--fill-in-place", action="store_true",
                    help="the masks filled in place, not in the background (the A/B knob "
                         "worker/grammar_masks.BACKGROUND_FILL)")
    ap.add_argument("--feed-in-background", action="store_true",
                    help="the matchers fed on the helper thread too (the A/B knob "
                         "worker/grammar_masks.FEED_IN_BACKGROUND)")
    args = ap.parse_args()
    grammar_masks.FEED_IN_BACKGROUND = args.feed_in_background
    unknown = set(args.modes.split(",")) - {"plain", "json"}
    if unknown:
        ap.error(f"--modes takes plain and json, not {', '.join(sorted(unknown))}")
    if args.fill_in_place:
        grammar_masks.BACKGROUND_FILL = False
    if args.default_slices:
        grammar.SLICES = None
    engine = random_weights_engine(args.model, tokenizer=args.tokenizer,
                                   skip_tokenizer_init=False, max_num_seqs=128)
    masks = engine.core.executor.worker.runner.grammars
    n = args.output_len
    valid = check_outputs(engine)  # also compiles the grammars, makes the first masks
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        plain = [SamplingParams(temperature=1.0, seed=i, max_tokens=n, ignore_eos=True)
                 for i in range(batch)]
        constrained = [SamplingParams(temperature=1.0, seed=i, max_tokens=n,
                                      structured_outputs={"json": SCHEMA})
                       for i in range(batch)]
        result = {"batch": batch}
        modes = args.modes.split(",")
        for name, params in (("plain", plain), ("json", constrained)):
            if name not in modes:
                continue
            print(f"measuring batch {batch}, {name}", file=sys.stderr, flush=True)
            for t in masks.timings.values():
                t.clear()
            steps = decode_steps(engine, batch, params, args.input_len, name)
            ms = statistics.median(steps) * 1e3
            result[f"{name}_ms"] = ms
            result[f"{name}_tok_s"] = batch / ms * 1e3
            if name == "json":
                for part, values in masks.timings.items():
                    result[f"{part}_us"] = statistics.median(values) * 1e6 if values else None
        if len(modes) == 2:
            result["overhead_pct"] = 100 * (result["json_ms"] / result["plain_ms"] - 1)
        rows.append(result)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"model": args.model, "device": device, "output_len": n, "rows": rows,
              "valid_records": valid, "schema_library": masks.schema_library}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{args.model} on {device}, temperature 1, {n} tokens per request; "
          f"{valid}/16 sampled records valid; masks by {masks.schema_library}")
    print(f"{'batch':>5} {'plain ms':>9} {'json ms':>8} {'plain tok/s':>11} "
          f"{'json tok/s':>10} {'overhead':>8} {'advance us':>10} {'fill us':>8} "
          f"{'wait us':>8}")
    for r in rows:
        cells = [f"{r.get(k, float('nan')):{w}.2f}" for k, w in (("plain_ms", 9), ("json_ms", 8))]
        cells += [f"{r.get(k, float('nan')):{w}.0f}" for k, w in (("plain_tok_s", 11),
                                                                  ("json_tok_s", 10))]
        cells.append(f"{r.get('overhead_pct', float('nan')):>7.1f}%")
        cells += [f"{r.get(k) or 0:{w}.0f}" for k, w in (("advance_us", 10), ("fill_us", 8),
                                                         ("wait_us", 8))]
        print(f"{r['batch']:>5} " + " ".join(cells))
    engine.shutdown()


if __name__ == "__main__":
    main()
