"""Speculative decoding's acceptance on real models (CPU; issue 21): Qwen2.5-Coder-0.5B
drafting for Qwen2.5-Coder-1.5B (shared/MODELS.md) on 20 coding prompts at k = 2, 4, 6,
and n-gram drafting on an editing task (the prompt holds code that the answer mostly
repeats), greedy.

For each run: drafts verified, accepted, the acceptance rate, mean tokens per verify step
(accepted drafts + 1), and whether the outputs equal plain decoding's token for token
(they must: greedy speculation is exact). k is fixed per run (speculative_adaptive off) so
the rates belong to that k. Writes JSON (--out) and prints a table for RESULTS.md.

    python benchmarks/spec_decode_acceptance.py --out spec_acceptance.json [--max-tokens 96]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from quant_accuracy import model_path  # noqa: E402  (the Qwen GGUF files, joined once)

from tessera import LLM, SamplingParams  # noqa: E402

CODING = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Implement binary search over a sorted list in Python.",
    "Write a Python class for a stack with push, pop and peek.",
    "Write a function that merges two sorted lists into one sorted list.",
    "Write a Python function that counts the words in a text file.",
    "Implement quicksort in Python.",
    "Write a JavaScript function that debounces another function.",
    "Write a SQL query that finds the ten customers with the most orders.",
    "Write a Python function that flattens a nested list.",
    "Write a C function that reverses a string in place.",
    "Write a Python generator that yields prime numbers.",
    "Write a function that computes the greatest common divisor of two integers.",
    "Write a Python function that parses a CSV line with quoted fields.",
    "Write a Python decorator that times a function call.",
    "Implement a breadth-first search over a graph given as an adjacency dict.",
    "Write a Python function that converts a Roman numeral to an integer.",
    "Write a Rust function that sums the even numbers in a vector.",
    "Write a Python function that removes duplicates from a list, keeping order.",
    "Write a bash script that counts the lines of every .py file in a folder.",
]
CODE = '''def total_price(items, tax_rate):
    total = 0
    for item in items:
        price = item["price"] * item["quantity"]
        if item.get("discount"):
            price = price * (1 - item["discount"])
        total = total + price
    total = total * (1 + tax_rate)
    return round(total, 2)
'''
EDITING = [
    f"Rename the variable `total` to `amount` in this code and output the whole code:\n{CODE}",
    f"Add type hints to this function and output the whole function:\n{CODE}",
    f"Add a docstring to this function and output the whole function:\n{CODE}",
    f"Replace `total = total + price` by `total += price` and output the whole code:\n{CODE}",
    f"Rename the function to `order_total` and output the whole code:\n{CODE}",
]


def run(target: str, prompts: list, max_tokens: int, spec: dict | None) -> dict:
    llm = LLM(target, max_model_len=2048, **({"speculative_config": spec} if spec else {}))
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    seconds = time.perf_counter() - start
    stats = llm.engine.stats()
    drafted, accepted, steps = (stats["spec_drafted"], stats["spec_accepted"],
                                stats["spec_verify_steps"])
    return {"spec": spec, "seconds": seconds, "steps": stats["steps"],
            "outputs": [o.outputs[0].token_ids for o in outs],
            "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "drafted": drafted, "accepted": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_accepted_length": 1 + accepted / steps if steps else 1.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="spec_acceptance.json")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--ks", default="2,4,6")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tessera-models"))
    args = ap.parse_args()
    target, draft = model_path("qwen-1.5b", args.cache), model_path("qwen-0.5b", args.cache)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or "cpu",
              "target": target, "draft": draft, "runs": []}
    table = ["| task | drafts | k | acceptance | tokens / verify step | equals plain | s |",
             "|---|---|---|---|---|---|---|"]
    for task, prompts, specs in (
            ("coding", CODING, [dict(model=draft, num_speculative_tokens=int(k),
                                     speculative_adaptive=False)
                                for k in args.ks.split(",")]),
            ("editing", EDITING, [dict(method="ngram", num_speculative_tokens=4,
                                       speculative_adaptive=False)])):
        plain = run(target, prompts, args.max_tokens, None)
        table.append(f"| {task} | none | - | - | 1.00 | - | {plain['seconds']:.0f} |")
        result["runs"].append({"task": task, **plain})
        for spec in specs:
            r = run(target, prompts, args.max_tokens, spec)
            same = sum(a == b for a, b in zip(r["outputs"], plain["outputs"]))
            r.update(task=task, equal_outputs=same, prompts=len(prompts))
            result["runs"].append(r)
            kind = "ngram" if spec.get("method") == "ngram" else "qwen-0.5b"
            table.append(f"| {task} | {kind} | {spec['num_speculative_tokens']} | "
                         f"{r['acceptance_rate']:.1%} | {r['mean_accepted_length']:.2f} | "
                         f"{same}/{len(prompts)} | {r['seconds']:.0f} |")
            print(table[-1], flush=True)
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    print("\n".join(table))


if __name__ == "__main__":
    main()
