"""Knowledge distillation: `tessera distill` trains a smaller student on a teacher's
next-token distributions, to serve cheaply or to draft for speculative decoding.

Modules, in the order a run uses them: models (teacher and student as transformers
models, the student cut from the teacher's layers, the HF output folder), data (text and
JSONL packed into sequences, held-out split, batch order), on_policy (the teacher's own
continuations through Tessera's engine), teacher (top-k targets, live or cached on disk),
loss (top-k KL at a temperature, cross-entropy), checkpoint (safetensors + JSON,
resumable), trainer (the loop: `distill(DistillConfig)`), cli (`tessera distill`).
"""
