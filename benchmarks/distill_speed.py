"""Training speed of `tessera distill` (issue 25) on random weights of real shapes: tokens per
second through the whole step (teacher forward for its top-k, student forward and
backward, AdamW), on whatever device there is (bf16 autocast on a GPU).

Shapes: smollm2 (SmolLM2-135M: 30 layers, hidden 576, vocab 49152; the student keeps
--student-layers of them) and qwen (Qwen2.5-Coder-1.5B teacher, 0.5B student; vocab
151936). The text is Tessera's own source, tokenized by a 4096-token BPE trained here
(token ids then cover only part of the vocabulary; speed does not depend on which ids).

    python benchmarks/distill_speed.py --shape smollm2 --steps 30 --seq-len 512 --batch-size 16
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers.bpe import train_bpe  # noqa: E402  (the tests' BPE trainer)

SHAPES = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    tie_word_embeddings=True, rope_theta=100000.0),
    "qwen-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      tie_word_embeddings=False, rope_theta=1e6),
    "qwen-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                      num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      tie_word_embeddings=False, rope_theta=1e6),
}


def tokenizer(files: list[str]):
    return train_bpe(files, 4096)


def random_model(folder: str, shape: str, tok) -> str:
    import transformers
    cls = transformers.LlamaConfig if shape == "smollm2" else transformers.Qwen2Config
    cfg = cls(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=("smollm2", "qwen"), default="smollm2")
    ap.add_argument("--student-layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    from tessera.distill.trainer import DistillConfig, distill
    root = os.path.join(os.path.dirname(__file__), "..", "tessera")
    files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    tok = tokenizer(files)
    work = tempfile.mkdtemp(prefix="distill-speed-")
    if args.shape == "smollm2":
        teacher = random_model(os.path.join(work, "teacher"), "smollm2", tok)
        student = dict(student_layers=args.student_layers)
    else:
        teacher = random_model(os.path.join(work, "teacher"), "qwen-1.5b", tok)
        student = dict(student=random_model(os.path.join(work, "student"), "qwen-0.5b", tok))
    warm = 3
    summary = distill(DistillConfig(
        teacher=teacher, data=files, out=os.path.join(work, "out"), steps=args.steps,
        seq_len=args.seq_len, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        eval_every=10**6, save_every=10**6, eval_sequences=2, progress=False,
        gradient_checkpointing=args.gradient_checkpointing, **student))
    with open(os.path.join(work, "out", "distill_log.jsonl")) as f:
        times = [e["elapsed_s"] for e in map(json.loads, f) if "elapsed_s" in e]
    tokens = (len(times) - warm) * args.batch_size * args.seq_len
    steady = tokens / (times[-1] - times[warm - 1])  # after the first `warm` steps
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": device, "shape": args.shape,
                      "seq_len": args.seq_len, "batch_size": args.batch_size,
                      "tokens_per_s_overall": round(summary["tokens_per_s"]),
                      "tokens_per_s_steady": round(steady),
                      "peak_gib": round(peak, 1)}))


if __name__ == "__main__":
    main()
