"""Warm-up steps run once the KV cache exists, so serving never waits for a kernel compile.

Triton compiles a kernel for each new combination of its constexprs (and of the argument
properties it specializes on) the first time it meets one, which takes ~0.5-1 s of host
time; inside a serving step that stalls every request in it (measured: the throughput
workload took 45.0 s with 13 such compiles against 35.9 s with none, H100, 2026-11-26).
The profiling pass and the decode-graph capture already meet the big-prefill and decode
variants; `warm_up(runner)` meets the rest, through the runner's normal `execute`:

- step 1: two short prompts (5 and 9 tokens): an eager step of at most 16 rows (the skinny
  GEMM outside a graph, q/k/v unfused), prefill attention in its short-query tiles, the
  LM head on 2 rows;
- step 2: both decode one token beside a 40-token prompt: a mixed step (decode kernel
  eager, prefill attention in its long-query tiles, cuBLAS GEMMs), the LM head on 3 rows;
- the LM head on 16 rows (the skinny kernel's multiple-of-16 variant).

It writes only into cache blocks that no request owns yet, and leaves no request state
behind. Objects: `warm_up(runner)` -> whether it ran (it needs a few free blocks, and one
pipeline stage: stages would have to step in lockstep).
"""
from __future__ import annotations

import torch

from tessera.engine.protocol import CachedRequestData, NewRequestData, SchedulerOutput
from tessera.sampling_params import SamplingParams

_PROMPTS = {"warm-up-a": 5, "warm-up-b": 9}
_LONG_PROMPT = ("warm-up-c", 40)


@torch.inference_mode()
def warm_up(runner) -> bool:
    bs = runner.block_size
    lengths = {**_PROMPTS, _LONG_PROMPT[0]: _LONG_PROMPT[1]}
    need = {rid: -(-(n + 1) // bs) for rid, n in lengths.items()}  # room for one more token
    num_blocks = runner.kv_caches[0].shape[1] - 1 if runner.kv_caches else 0  # less scratch
    if (runner.stage.size > 1 or sum(need.values()) > num_blocks
            or max(lengths.values()) >= runner.max_model_len):
        return False
    blocks, first = {}, 0
    for rid, n in need.items():
        blocks[rid] = list(range(first, first + n))
        first += n
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)

    def new(rid: str) -> NewRequestData:
        n = lengths[rid]
        return NewRequestData(rid, [1 + i % 7 for i in range(n)], n, params, blocks[rid], 0, 0)

    runner.execute(SchedulerOutput([new(r) for r in _PROMPTS], [], dict(_PROMPTS), set(), set()))
    decodes = [CachedRequestData(r, [], []) for r in _PROMPTS]
    scheduled = {**{r: 1 for r in _PROMPTS}, _LONG_PROMPT[0]: _LONG_PROMPT[1]}
    runner.execute(SchedulerOutput([new(_LONG_PROMPT[0])], decodes, scheduled, set(), set()))
    hidden = runner.arch.hidden_size
    runner.model.compute_logits(torch.zeros(16, hidden, dtype=runner.dtype, device=runner.device))
    runner.execute(SchedulerOutput([], [], {}, set(lengths), set()))  # forget the requests
    return True
