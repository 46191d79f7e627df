"""On-policy data: the teacher's own continuations of prompts cut from the training text.

A draft is judged on the tokens its target generates, not on human text, so a draft
trained on the target's generations agrees with it more often (DistillSpec, Zhou et al.
2023). `teacher_generations(teacher_path, seqs, prompt_tokens, temperature, seed, out)`
takes the first `prompt_tokens` of every sequence as a prompt and lets Tessera's engine
(the offline LLM, the teacher as it is served) continue it to the sequence length at the
given temperature, each request seeded (seed + its index). Result: Sequences whose loss
mask covers only the generated tokens; a continuation that ends early (EOS) is padded with
EOS, unscored.

The generations are saved in `out/on_policy.safetensors` (tokens, mask) with a JSON
sidecar naming the teacher, the data and the settings; a resumed run reads them back
instead of generating again (sampling need not repeat bit for bit across batchings).
"""
from __future__ import annotations

import json
import logging
import os

import torch

from tessera.distill.data import Sequences

logger = logging.getLogger("tessera.distill")
FILE, META = "on_policy.safetensors", "on_policy.json"


def _generate(teacher_path: str, seqs: Sequences, prompt_tokens: int, temperature: float,
              seed: int, eos: int) -> Sequences:
    from tessera.llm import LLM
    from tessera.sampling_params import SamplingParams
    length = seqs.tokens.shape[1]
    llm = LLM(teacher_path, max_model_len=length, enable_prefix_caching=False)
    prompts = [{"prompt_token_ids": row[:prompt_tokens].tolist()} for row in seqs.tokens]
    params = [SamplingParams(temperature=temperature, max_tokens=length - prompt_tokens,
                             seed=seed + i) for i in range(len(prompts))]
    outs = llm.generate(prompts, params)
    tokens = torch.full_like(seqs.tokens, eos)
    mask = torch.zeros_like(seqs.loss_mask)
    tokens[:, :prompt_tokens] = seqs.tokens[:, :prompt_tokens]
    for row, out in enumerate(outs):
        gen = out.outputs[0].token_ids
        tokens[row, prompt_tokens:prompt_tokens + len(gen)] = torch.tensor(gen)
        mask[row, prompt_tokens - 1:prompt_tokens - 1 + len(gen)] = True  # predicts gen
    del llm
    return Sequences(tokens, mask)


def teacher_generations(teacher_path: str, seqs: Sequences, prompt_tokens: int,
                        temperature: float, seed: int, eos: int, out: str,
                        data_fingerprint: str) -> Sequences:
    from safetensors.torch import load_file, save_file
    length = seqs.tokens.shape[1]
    if not 1 <= prompt_tokens < length:
        raise ValueError(f"--prompt-tokens must be between 1 and --seq-len - 1 ({length - 1})")
    meta = {"teacher": os.path.abspath(teacher_path), "data": data_fingerprint,
            "prompt_tokens": prompt_tokens, "temperature": temperature, "seed": seed}
    path, meta_path = os.path.join(out, FILE), os.path.join(out, META)
    if os.path.isfile(path) and os.path.isfile(meta_path) and json.load(open(meta_path)) == meta:
        saved = load_file(path)
        logger.info("on-policy data: %d teacher continuations read from %s", len(seqs), path)
        return Sequences(saved["tokens"], saved["mask"])
    logger.info("on-policy data: the teacher continues %d prompts of %d tokens to %d",
                len(seqs), prompt_tokens, length)
    result = _generate(teacher_path, seqs, prompt_tokens, temperature, seed, eos)
    os.makedirs(out, exist_ok=True)
    save_file({"tokens": result.tokens, "mask": result.loss_mask}, path)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return result
