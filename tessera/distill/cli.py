"""`tessera distill`: the command line of distill(DistillConfig) (trainer.py).

    tessera distill --teacher T --student-layers 8 --data FILES --steps N --out DIR
    tessera distill --teacher T --student S --data FILES --steps N --out DIR --resume
"""
from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from tessera.distill.trainer import DistillConfig, distill
    fields = {f for f in DistillConfig.__dataclass_fields__}
    cfg = DistillConfig(**{k: v for k, v in vars(args).items() if k in fields})
    summary = distill(cfg)
    before, after = summary["before"], summary["after"]
    print(json.dumps({"held_out_kl": [round(before["kl"], 4), round(after["kl"], 4)],
                      "held_out_ppl": [round(before["ppl"], 3), round(after["ppl"], 3)],
                      "teacher_ppl": round(after["teacher_ppl"], 3),
                      "tokens_per_s": round(summary["tokens_per_s"], 1),
                      "out": summary["out"]}))
    return 0


def add_distill_parser(sub, parents: list) -> None:
    p = sub.add_parser("distill", parents=parents,
                       help="train a smaller student to match a teacher's distributions "
                            "(knowledge distillation); writes an HF folder to serve or draft")
    m = p.add_argument_group("models")
    m.add_argument("--teacher", required=True, help="HF folder or .gguf file")
    which = m.add_mutually_exclusive_group(required=True)
    which.add_argument("--student", default=None, help="HF folder or .gguf (same tokenizer)")
    which.add_argument("--student-layers", type=int, default=None, metavar="N",
                       help="a student of N of the teacher's layers (evenly spread, first and "
                            "last kept), initialised from them")
    m.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: the student (config, safetensors, tokenizer), "
                        "checkpoints, distill_log.jsonl")
    d = p.add_argument_group("data")
    d.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="text files, JSONL (text | prompt+completion | messages) or folders")
    d.add_argument("--eval-data", nargs="+", default=None, metavar="FILE",
                   help="held-out text (default: --eval-sequences of the data set aside)")
    d.add_argument("--eval-sequences", type=int, default=8)
    d.add_argument("--seq-len", type=int, default=512, help="tokens per packed sequence")
    d.add_argument("--max-tokens", type=int, default=None, help="read at most this many tokens")
    d.add_argument("--on-policy", action="store_true",
                   help="train on the teacher's own continuations of prompts cut from the "
                        "data (for drafts)")
    d.add_argument("--prompt-tokens", type=int, default=64,
                   help="on-policy: prompt tokens per sequence (default 64)")
    d.add_argument("--on-policy-temperature", type=float, default=1.0)
    lg = p.add_argument_group("loss")
    lg.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    lg.add_argument("--top-k", type=int, default=64, help="teacher logits kept per position")
    lg.add_argument("--ce-weight", type=float, default=0.0,
                    help="loss = (1 - w) KL + w cross-entropy (default 0)")
    lg.add_argument("--teacher-cache", default=None, metavar="DIR",
                    help="precompute the teacher's top-k logits once, into DIR")
    o = p.add_argument_group("optimization")
    o.add_argument("--steps", type=int, default=1000)
    o.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    o.add_argument("--micro-batch-size", type=int, default=None,
                   help="sequences per forward; the step accumulates gradients")
    o.add_argument("--lr", type=float, default=1e-4)
    o.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="the cosine decays to this fraction of --lr")
    o.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of --steps")
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--gradient-checkpointing", action="store_true")
    o.add_argument("--no-autocast", dest="autocast", action="store_false",
                   help="train in float32 on a GPU too (default: bf16 autocast there)")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("evaluation and checkpoints")
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--save-every", type=int, default=200)
    r.add_argument("--keep-checkpoints", type=int, default=2)
    r.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run)
