"""A distilled draft, end to end (issue 25): distill a student from a teacher on the Python
standard library's source and docs, then measure it as the teacher's draft, before and after.

Pairs (shared/MODELS.md):
- smollm2 (default): SmolLM2-135M-Instruct as teacher; the student is 8 of its 30 layers
  (evenly spread, first and last kept), initialised from them.
- qwen: Qwen2.5-Coder-1.5B as teacher, Qwen2.5-Coder-0.5B as student (a short run).

Data (written to WORK/data): training text is every top-level standard-library module but
the ten that quant/perplexity.py scores, and the language reference's pydoc topics after
the first ten; held-out text alternates those ten modules with the first ten topics. So
the held-out KL and perplexity are measured on text the student never trained on.

Reported, before and after: held-out KL(teacher || student) over the full vocabulary and
the student's perplexity (from `tessera distill`'s evaluations), and the student's
acceptance rate as the teacher's draft (Tessera's speculative decoding, k fixed, greedy) on
two prompt sets: the 20 coding questions of spec_decode_acceptance.py (chat) and 20
continuations of held-out standard-library code (raw text). Greedy speculation is exact,
so the outputs are checked equal to plain decoding's.

    python benchmarks/distill_draft.py --work /tmp/distill [--pair qwen] [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(__file__))
from quant_accuracy import model_path  # noqa: E402  (the Qwen GGUF files, joined once)
from spec_decode_acceptance import CODING  # noqa: E402

from tessera.quant.perplexity import CODE_FILES  # noqa: E402

HELD_TOPICS = 10


def write_data(folder: str) -> tuple[str, str, list[str]]:
    """(train.jsonl, eval.jsonl, code prompts from the held-out modules)."""
    from pydoc_data.topics import topics
    os.makedirs(folder, exist_ok=True)
    root = sysconfig.get_paths()["stdlib"]
    keys = sorted(topics)
    train, held, prompts = [], [], []
    for name in sorted(os.listdir(root)):
        if name.endswith(".py") and name not in CODE_FILES:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                train.append(f.read())
    train += [topics[k] for k in keys[HELD_TOPICS:]]
    for i, name in enumerate(CODE_FILES):
        with open(os.path.join(root, name), encoding="utf-8") as f:
            code = f.read()
        held += [code, topics[keys[i]]]
        lines = code.splitlines()
        for start in (len(lines) // 3, 2 * len(lines) // 3):  # two cuts per module
            prompts.append("\n".join(lines[max(0, start - 12):start]) + "\n")
    paths = []
    for name, docs in (("train.jsonl", train), ("eval.jsonl", held)):
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "w") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return paths[0], paths[1], prompts


def acceptance(target: str, draft: str, chat: list[str], code: list[str], k: int,
               max_tokens: int) -> dict:
    from tessera import LLM, SamplingParams
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    result = {}
    plain = LLM(target, max_model_len=2048)
    expected = {"chat": [o.outputs[0].token_ids for o in plain.chat(
                    [[{"role": "user", "content": p}] for p in chat], params)],
                "code": [o.outputs[0].token_ids for o in plain.generate(code, params)]}
    del plain
    llm = LLM(target, max_model_len=2048, speculative_config=dict(
        model=draft, num_speculative_tokens=k, speculative_adaptive=False))
    for name, prompts in (("chat", chat), ("code", code)):
        before = llm.engine.stats()
        start = time.perf_counter()
        outs = (llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
                if name == "chat" else llm.generate(prompts, params))
        after = llm.engine.stats()
        drafted = after["spec_drafted"] - before["spec_drafted"]
        accepted = after["spec_accepted"] - before["spec_accepted"]
        steps = after["spec_verify_steps"] - before["spec_verify_steps"]
        result[name] = {"acceptance_rate": accepted / max(1, drafted),
                        "tokens_per_verify_step": 1 + accepted / max(1, steps),
                        "equal_to_plain": sum(o.outputs[0].token_ids == e for o, e in
                                              zip(outs, expected[name])),
                        "prompts": len(prompts), "seconds": time.perf_counter() - start}
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/tessera-distill")
    ap.add_argument("--pair", choices=("smollm2", "qwen"), default="smollm2")
    ap.add_argument("--layers", type=int, default=8, help="smollm2: the student's layers")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: 3e-4 (smollm2), 2e-5 (qwen)")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--eval-sequences", type=int, default=16)
    ap.add_argument("--k", type=int, default=4, help="draft tokens per verify step")
    ap.add_argument("--max-tokens", type=int, default=64, help="generated per prompt")
    ap.add_argument("--prompts", type=int, default=20, help="prompts per set (at most 20)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tessera-models"))
    args = ap.parse_args()
    from tessera.distill.trainer import DistillConfig, distill

    train, held, code_prompts = write_data(os.path.join(args.work, "data"))
    chat_prompts, code_prompts = CODING[:args.prompts], code_prompts[:args.prompts]
    out = os.path.join(args.work, f"{args.pair}-student")
    if args.pair == "smollm2":
        teacher = model_path("smollm2", args.cache)
        initial = os.path.join(args.work, "smollm2-initial")
        if not os.path.isfile(os.path.join(initial, "config.json")):
            from tessera.distill.models import (load_causal_lm, save_hf_folder,
                                                student_from_teacher)
            model, tokenizer = load_causal_lm(teacher)
            save_hf_folder(student_from_teacher(model, args.layers), tokenizer, initial)
            del model
        student = dict(student=initial)
        lr = args.lr or 3e-4
    else:
        teacher, initial = model_path("qwen-1.5b", args.cache), model_path("qwen-0.5b", args.cache)
        student = dict(student=initial)
        lr = args.lr or 2e-5
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or "cpu",
              "pair": args.pair, "teacher": teacher, "args": vars(args)}
    report["draft_before"] = acceptance(teacher, initial, chat_prompts, code_prompts, args.k,
                                        args.max_tokens)
    print("before:", json.dumps(report["draft_before"]), flush=True)
    summary = distill(DistillConfig(
        teacher=teacher, data=[train], eval_data=[held], out=out, steps=args.steps,
        seq_len=args.seq_len, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        lr=lr, top_k=args.top_k, eval_sequences=args.eval_sequences,
        eval_every=max(1, args.steps // 4), save_every=max(1, args.steps // 4),
        max_tokens=args.steps * args.batch_size * args.seq_len + args.seq_len,
        resume=True, **student))
    report["distill"] = summary
    report["draft_after"] = acceptance(teacher, out, chat_prompts, code_prompts, args.k,
                                       args.max_tokens)
    with open(os.path.join(args.work, f"{args.pair}-report.json"), "w") as f:
        json.dump(report, f, indent=1)
    b, a = summary["before"], summary["after"]
    print(f"\n| {args.pair} | before | after |\n|---|---|---|")
    print(f"| held-out KL (nats/token) | {b['kl']:.4f} | {a['kl']:.4f} |")
    print(f"| held-out perplexity (teacher {a['teacher_ppl']:.2f}) | {b['ppl']:.2f} | "
          f"{a['ppl']:.2f} |")
    for name in ("chat", "code"):
        x, y = report["draft_before"][name], report["draft_after"][name]
        print(f"| acceptance, {name} (k={args.k}) | {x['acceptance_rate']:.1%} | "
              f"{y['acceptance_rate']:.1%} |")
        print(f"| tokens per verify step, {name} | {x['tokens_per_verify_step']:.2f} | "
              f"{y['tokens_per_verify_step']:.2f} |")
        print(f"| equal to plain, {name} | {x['equal_to_plain']}/{x['prompts']} | "
              f"{y['equal_to_plain']}/{y['prompts']} |")
    print(f"\n{summary['tokens_per_s']:.0f} training tokens/s, {args.steps} steps")


if __name__ == "__main__":
    main()
