"""`distill(DistillConfig)`: a student trained to match a teacher's next-token distributions.

Flow: load the teacher (models.py) -> the student (a folder, or `student_layers` of the
teacher's layers) -> the data packed into sequences (data.py), a held-out part set aside,
or the teacher's own continuations (on_policy.py) -> the teacher's top-k targets, live or
cached (teacher.py) -> AdamW with linear warm-up then cosine decay to `min_lr_ratio` of
the peak, gradient accumulation over micro-batches, gradient clipping, bf16 autocast on a
GPU, optional gradient checkpointing -> evaluation (held-out KL to the teacher over the
full vocabulary at T = 1, and perplexity) at the start, every `eval_every` steps and at
the end -> checkpoints every `save_every` steps (checkpoint.py), resumable bit for bit ->
the student saved as an HF folder in `out`, with `distill_log.jsonl` (one line per
evaluation) beside it.

Objects: DistillConfig (every setting; `identity()` names those that change the result),
`distill(config) -> dict` (the run's summary: evaluations before and after, tokens per
second), `evaluate(student, teacher, held, ...)`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Optional

import torch

from tessera.distill import checkpoint as ckpt
from tessera.distill.data import (Sequences, batch_order, fingerprint, pack, read_documents,
                                  split_held_out)
from tessera.distill.loss import distill_sums
from tessera.distill.models import (check_compatible, load_causal_lm, save_hf_folder,
                                    student_from_teacher)
from tessera.distill.teacher import CachedTargets, LiveTargets, autocast_for

logger = logging.getLogger("tessera.distill")


@dataclasses.dataclass
class DistillConfig:
    teacher: str
    data: list[str]
    out: str
    student: Optional[str] = None  # a model folder / .gguf, or None with student_layers
    student_layers: Optional[int] = None
    steps: int = 1000
    seq_len: int = 512
    batch_size: int = 8  # sequences per optimizer step
    micro_batch_size: Optional[int] = None  # sequences per forward (default: batch_size)
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: Optional[int] = None  # default: 5% of steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 1.0
    top_k: int = 64
    ce_weight: float = 0.0  # loss = (1 - w) KL + w CE
    eval_every: int = 100
    eval_sequences: int = 8
    eval_data: Optional[list[str]] = None
    save_every: int = 200
    keep_checkpoints: int = 2
    resume: bool = False
    teacher_cache: Optional[str] = None
    on_policy: bool = False
    prompt_tokens: int = 64
    on_policy_temperature: float = 1.0
    max_tokens: Optional[int] = None  # tokens of data read at most
    gradient_checkpointing: bool = False
    device: str = "auto"
    autocast: bool = True  # bf16 autocast on a GPU
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, "--steps must be at least 1"),
                  (self.batch_size >= 1, "--batch-size must be at least 1"),
                  (self.micro_batch_size is None or self.micro_batch_size >= 1,
                   "--micro-batch-size must be at least 1"),
                  (self.top_k >= 1, "--top-k must be at least 1"),
                  (self.temperature > 0 and math.isfinite(self.temperature),
                   "--temperature must be a positive number"),
                  (0.0 <= self.ce_weight <= 1.0, "--ce-weight must be between 0 and 1"),
                  (self.lr > 0, "--lr must be positive"),
                  (0.0 <= self.min_lr_ratio <= 1.0, "--min-lr-ratio must be between 0 and 1"),
                  (self.eval_every >= 1 and self.save_every >= 1,
                   "--eval-every and --save-every must be at least 1"),
                  ((self.student is None) != (self.student_layers is None),
                   "give the student as --student PATH or --student-layers N (one of them)"),
                  (bool(self.data), "--data: give at least one file or folder")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def identity(self, data_fingerprint: str) -> dict:
        """The settings a resumed run must share with its checkpoint."""
        skip = {"out", "resume", "eval_every", "save_every", "keep_checkpoints", "progress",
                "teacher_cache", "device", "data", "eval_data", "eval_sequences"}
        same = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {**same, "data": data_fingerprint}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _schedule(optimizer, cfg: DistillConfig):
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer(student, cfg: DistillConfig):
    decay, no_decay = [], []
    for p in student.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


@torch.no_grad()
def evaluate(student, teacher, held: Sequences, device: torch.device, autocast: bool,
             rows: int = 2) -> dict:
    """Held-out KL(teacher || student) over the full vocabulary at T = 1 (nats per scored
    token), the student's and the teacher's perplexity."""
    was_training = student.training
    student.eval()
    kl = ce_s = ce_t = 0.0
    count = 0
    for start in range(0, len(held), rows):
        tokens = held.tokens[start:start + rows].to(device)
        mask = held.loss_mask[start:start + rows, :-1].to(device)
        with autocast_for(device, autocast):
            log_q = torch.log_softmax(student(input_ids=tokens).logits[:, :-1].float(), -1)
            log_p = torch.log_softmax(teacher(input_ids=tokens).logits[:, :-1].float(), -1)
        nxt = tokens[:, 1:, None]
        kl += float(((log_p.exp() * (log_p - log_q)).sum(-1) * mask).sum())
        ce_s -= float((log_q.gather(-1, nxt)[..., 0] * mask).sum())
        ce_t -= float((log_p.gather(-1, nxt)[..., 0] * mask).sum())
        count += int(mask.sum())
    student.train(was_training)
    return {"kl": kl / count, "ppl": math.exp(ce_s / count),
            "teacher_ppl": math.exp(ce_t / count), "tokens": count}


def _load_data(cfg: DistillConfig, tokenizer) -> tuple[Sequences, Sequences]:
    seqs = pack(tokenizer, read_documents(cfg.data, tokenizer), cfg.seq_len, cfg.max_tokens)
    if cfg.eval_data:
        held = pack(tokenizer, read_documents(cfg.eval_data, tokenizer), cfg.seq_len)
        return seqs, held.take(range(min(cfg.eval_sequences, len(held))))
    return split_held_out(seqs, cfg.eval_sequences, cfg.seed)


def _student(cfg: DistillConfig, teacher, tokenizer):
    if cfg.student_layers is not None:
        return student_from_teacher(teacher, cfg.student_layers)
    student, student_tokenizer = load_causal_lm(cfg.student)
    check_compatible(teacher, student)
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the student {cfg.student} has another tokenizer than the teacher "
                         "(same size, other tokens): both must share one")
    return student


def _step(student, targets, train: Sequences, indices: list[int], cfg: DistillConfig,
          device: torch.device) -> dict:
    """One optimizer step's forward and backward over its micro-batches (no update)."""
    scored = int(train.loss_mask[indices][:, :-1].sum())
    micro = cfg.micro_batch_size or cfg.batch_size
    kl_sum = ce_sum = 0.0
    for start in range(0, len(indices), micro):
        chunk = indices[start:start + micro]
        top_ids, top_logits = targets.get(chunk)
        tokens = train.tokens[chunk].to(device)
        with autocast_for(device, cfg.autocast):
            logits = student(input_ids=tokens).logits  # [b, L, V]
        sums = distill_sums(logits, tokens, train.loss_mask[chunk].to(device),
                            top_ids.to(device), top_logits.to(device), cfg.temperature)
        loss = ((1 - cfg.ce_weight) * sums.kl + cfg.ce_weight * sums.ce) / max(1, scored)
        loss.backward()
        kl_sum += float(sums.kl.detach())
        ce_sum += float(sums.ce.detach())
    return {"kl": kl_sum / max(1, scored) / cfg.temperature ** 2,
            "ce": ce_sum / max(1, scored),
            "loss": ((1 - cfg.ce_weight) * kl_sum + cfg.ce_weight * ce_sum) / max(1, scored)}


def _log(out: str, entry: dict) -> None:
    with open(os.path.join(out, "distill_log.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def _truncate_log(out: str, step: int) -> None:
    """A resumed run's log keeps the lines up to its checkpoint's step."""
    path = os.path.join(out, "distill_log.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            kept = [line for line in f if json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(kept)


def distill(cfg: DistillConfig) -> dict:
    from tqdm import tqdm
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    teacher, tokenizer = load_causal_lm(cfg.teacher)
    teacher.to(device).requires_grad_(False)
    student = _student(cfg, teacher, tokenizer).to(device)
    train, held = _load_data(cfg, tokenizer)
    if cfg.on_policy:
        from tessera.distill.on_policy import teacher_generations
        train = teacher_generations(cfg.teacher, train, cfg.prompt_tokens,
                                    cfg.on_policy_temperature, cfg.seed,
                                    tokenizer.eos_token_id or 0, cfg.out, fingerprint(train))
    data_id = fingerprint(train)
    identity = cfg.identity(data_id)
    if cfg.teacher_cache:
        targets = CachedTargets(cfg.teacher_cache, cfg.teacher, teacher, train, cfg.top_k,
                                data_id, device, cfg.autocast)
    else:
        targets = LiveTargets(teacher, train, cfg.top_k, device, cfg.autocast)
    logger.info("data: %d training sequences of %d tokens (%d scored), %d held out",
                len(train), cfg.seq_len, train.scored, len(held))
    student.config.use_cache = False
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    optimizer = _optimizer(student, cfg)
    scheduler = _schedule(optimizer, cfg)
    step, history = 0, []
    found = ckpt.latest_checkpoint(cfg.out) if cfg.resume else None
    if found:
        step, history = ckpt.load_checkpoint(found, student, optimizer, scheduler, identity)
        logger.info("resumed from %s (step %d of %d)", found, step, cfg.steps)
        _truncate_log(cfg.out, step)
    elif cfg.resume:
        logger.info("--resume: no checkpoint in %s; starting afresh", cfg.out)
    if step == 0:
        history = [{"step": 0, **evaluate(student, teacher, held, device, cfg.autocast)}]
        _log(cfg.out, history[-1])
        logger.info("before: held-out KL %.4f, perplexity %.2f (teacher %.2f)",
                    history[0]["kl"], history[0]["ppl"], history[0]["teacher_ppl"])
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, unit="step",
               dynamic_ncols=True)
    started, trained_tokens = time.perf_counter(), 0
    while step < cfg.steps:
        indices = batch_order(len(train), step, cfg.batch_size, cfg.seed)
        stats = _step(student, targets, train, indices, cfg, device)
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        trained_tokens += len(indices) * cfg.seq_len
        rate = trained_tokens / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", kl=f"{stats['kl']:.4f}",
                        tok_s=f"{rate:.0f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        entry = {"step": step, "train": stats}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            entry.update(evaluate(student, teacher, held, device, cfg.autocast))
            history.append(entry)
            bar.write(f"step {step}: held-out KL {entry['kl']:.4f}, perplexity "
                      f"{entry['ppl']:.2f}, train loss {stats['loss']:.4f}, {rate:.0f} tok/s")
        _log(cfg.out, {**entry, "tokens_per_s": rate,
                       "elapsed_s": time.perf_counter() - started})
        if step % cfg.save_every == 0 or step == cfg.steps:
            ckpt.save_checkpoint(cfg.out, step, student, optimizer, scheduler, identity,
                                 history, cfg.keep_checkpoints)
    bar.close()
    student.eval()
    student.config.use_cache = True
    save_hf_folder(student, tokenizer, cfg.out)
    summary = {"before": history[0], "after": history[-1], "steps": cfg.steps,
               "tokens_per_s": trained_tokens / max(1e-9, time.perf_counter() - started),
               "train_sequences": len(train), "out": cfg.out}
    with open(os.path.join(cfg.out, "distill_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
