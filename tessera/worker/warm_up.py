"""Warm-up steps run once the KV cache exists, so serving does not wait for kernel compiles.

Triton compiles a kernel for each new combination of its constexprs (and of the argument
properties it specializes on) the first time it meets one, which takes ~0.5-1 s of host
time; inside a serving step that stalls every request in it (measured: the throughput
workload took 45.0 s with 13 such compiles against 35.9 s with none, H100, 2026-11-26).
The decode-graph capture meets the decode variants of the batch sizes it captures;
`warm_up(runner)` meets the rest through the runner's normal `execute`, phase by phase
(each phase's requests are forgotten before the next):

- two short prompts (5 and 9 tokens): an eager step of 2-15 rows (the skinny GEMM outside
  a graph, q/k/v unfused), prefill attention in its short-query tiles, LM head on 2 rows;
- one 16-token prompt: the same at 16 rows (a multiple of 16 is its own variant);
- both short requests decode beside a 40-token prompt: a mixed step (decode kernel eager,
  prefill attention in its long-query tiles, cuBLAS GEMMs), LM head on 3 rows;
- without decode graphs (`enforce_eager`, MoE models): decode-only steps of 1, 2 and 16
  sequences, and of enough sequences that the decode kernel stops splitting;
- the LM head on 1 and 16 rows, the argmax of its float32 logits (the sampler's; greedy
  steps above took it in the model's dtype) and, where the runner samples, the structured
  outputs' mask on them;
- with a draft model (speculative decoding), each step above also asks it for drafts: its
  catch-up over the prompts (one-token rows up to 16, ragged past that: a 20-token prompt
  is added for the short-query tiles) and its draft steps meet their variants too.

Phases are cut to the step budget (`max_num_batched_tokens`, `max_num_seqs`) and the
context length, so they meet only what serving can meet. Requests take cache blocks from 0
up, wrapping around in a small cache: they write only blocks no request owns yet, and
their outputs are thrown away. Objects: `warm_up(runner)` -> whether it ran (not with
pipeline stages, which would have to step in lockstep, nor for a context of a few tokens).
"""
from __future__ import annotations

import torch

from tessera.engine.protocol import CachedRequestData, NewRequestData, SchedulerOutput
from tessera.sampling_params import SamplingParams

_PARAMS = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
_LONG_PROMPT = 40  # > 32 query rows: the prefill kernel's long-query tiles


@torch.inference_mode()
def warm_up(runner) -> bool:
    sched = runner.config.scheduler
    budget, max_seqs = sched.max_num_batched_tokens, sched.max_num_seqs
    longest = min(budget, runner.max_model_len - 2)  # tokens one prompt may bring
    if runner.stage.size > 1 or longest < 4:
        return False
    phase = _Phase(runner)
    phase.step({"a": 5, "b": 9} if longest >= 14 else {"a": 2, "b": 2})
    phase.step({"c": min(16, longest)})
    phase.forget("c")
    if phase.num_drafts and longest >= 32:  # the draft's catch-up of 17-32 tokens: ragged,
        phase.step({"e": 20})  # short-query tiles (up to 16 it runs as decode rows), and
        phase.step({"f": 32})  # a multiple of 16, its own variant
        phase.forget("e", "f")
    phase.step({"a": 1, "b": 1, "d": min(_LONG_PROMPT, longest - 2)}, decoding=("a", "b"))
    phase.forget("a", "b", "d")
    if runner.graphs is None:
        from tessera.kernels.paged_decode_attention import default_num_splits
        unsplit = next(n for n in range(1, 1 << 12)  # the decode kernel stops splitting
                       if default_num_splits(n, runner.kv_heads) == 1)
        for n in sorted({1, 2, 16, unsplit}):
            if n <= min(budget, max_seqs):
                phase.step({f"s{i}": 1 for i in range(n)})  # one-token prompts: decodes
                phase.forget(*(f"s{i}" for i in range(n)))
    _lm_heads(runner)
    return True


def _lm_heads(runner) -> None:
    """The LM head in float32, its argmax (the sampler's; greedy steps above took the
    model's dtype) and the structured outputs' mask on it, on 1 and 16 rows; with
    speculation also on a verify step's k + 1 rows, in both dtypes, and the draft model's
    head as its sampled drafts take it."""
    heads = [(runner.model, runner.arch.hidden_size)]
    row_counts = {1, 16}
    spec = runner.config.speculative
    if spec.method is not None:
        row_counts |= {2, 4, 8, spec.num_speculative_tokens + 1}
        draft = getattr(runner.spec.proposer, "model", None)
        if draft is not None:
            heads.append((draft, runner.config.draft_info.arch.hidden_size))
    masks = runner.grammars is not None and not runner.config.model.skip_tokenizer_init
    for model, hidden in heads:
        for rows in sorted(row_counts):
            x = torch.zeros(rows, hidden, dtype=runner.dtype, device=runner.device)
            for as_float in ((True, False) if spec.method else (True,)):
                logits = model.compute_logits(x, as_float=as_float)
                runner.ops.argmax(logits)
                if masks and as_float:  # structured outputs' mask (they need a tokenizer)
                    runner.ops.apply_token_bitmask(logits, torch.full(
                        (rows, (logits.shape[1] + 31) // 32), -1, dtype=torch.int32,
                        device=runner.device))


class _Phase:
    """Runs scheduler-shaped steps on the runner for made-up requests."""

    def __init__(self, runner):
        self.runner = runner
        self.num_blocks = runner.kv_caches[0].shape[1] - 1  # less the graphs' scratch block
        self.next_block = 0
        spec = runner.config.speculative
        # a draft model proposes after each step (its own kernels' variants are met too),
        # writing its drafts' KV past the sampled token
        self.num_drafts = spec.num_speculative_tokens if spec.method == "draft" else 0

    def _blocks(self, tokens: int) -> list[int]:
        count = -(-(tokens + 1 + self.num_drafts) // self.runner.block_size)
        first, self.next_block = self.next_block, self.next_block + count
        return [(first + i) % self.num_blocks for i in range(count)]

    def step(self, scheduled: dict[str, int], decoding: tuple[str, ...] = ()) -> None:
        params = _PARAMS.clone(max_tokens=2 + self.num_drafts)  # room for the drafts
        new = [NewRequestData(rid, [1 + i % 7 for i in range(n)], n, params,
                              self._blocks(n), 0, 0)
               for rid, n in scheduled.items() if rid not in decoding]
        cached = [CachedRequestData(rid, [], []) for rid in decoding]
        sched = SchedulerOutput(new, cached, scheduled, set(), set())
        if self.num_drafts:
            sched.num_drafts = dict.fromkeys(scheduled, self.num_drafts)
        self.runner.execute(sched)

    def forget(self, *request_ids: str) -> None:
        self.runner.execute(SchedulerOutput([], [], {}, set(request_ids), set()))
