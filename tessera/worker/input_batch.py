"""The worker's view of its requests and the flat inputs of one step.

Objects: RequestState (what the worker keeps between steps: tokens, blocks, computed
count, sampling settings, its generator), StepInputs (flat tensors for the model plus
which rows sample or score prompt tokens), and `prepare_inputs(states, scheduled)`.
Ragged layout: the new tokens of all requests are packed one after another in
`input_ids` [T]; nothing is padded.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from tessera.layers.attention import AttentionMetadata, RaggedMetadata
from tessera.sampling_params import SamplingParams


@dataclasses.dataclass
class RequestState:
    request_id: str
    token_ids: list[int]  # prompt + output so far
    num_prompt_tokens: int
    params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    num_prompt_logprobs_done: int
    generator: Optional[torch.Generator] = None


@dataclasses.dataclass
class PromptLogprobRows:
    request_id: str
    first_row: int  # row in the step's hidden states of the first scored position
    first_token: int  # prompt index of the first token scored (position + 1)
    count: int


@dataclasses.dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    sample_rows: list[int]  # row in hidden states of each sampling request's last token
    sample_request_ids: list[str]
    prompt_rows: list[PromptLogprobRows]


def prepare_inputs(states: dict[str, RequestState], scheduled: dict[str, int],
                   block_size: int, device: torch.device, use_kernels: bool = False) -> StepInputs:
    """With kernels, one-token (decode) sequences go first, for the decode kernel."""
    order = list(scheduled)
    if use_kernels:
        order = [r for r in order if scheduled[r] == 1] + [r for r in order if scheduled[r] != 1]
    num_decodes = sum(1 for r in order if scheduled[r] == 1) if use_kernels else 0
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    seq_lens, query_lens, tables = [], [], []
    sample_rows, sample_ids, prompt_rows = [], [], []
    for rid in order:
        st, n = states[rid], scheduled[rid]
        start, row0 = st.num_computed_tokens, len(ids)
        end = start + n
        ids += st.token_ids[start:end]
        positions += range(start, end)
        blocks = st.block_ids
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(start, end)]
        seq_lens.append(end)
        query_lens.append(n)
        tables.append(blocks)
        if end == len(st.token_ids):
            sample_rows.append(row0 + n - 1)
            sample_ids.append(rid)
        if st.params.prompt_logprobs is not None:
            # position p scores prompt token p + 1
            first = max(start, st.num_prompt_logprobs_done - 1)
            last = min(end, st.num_prompt_tokens - 1)
            if last > first:
                prompt_rows.append(PromptLogprobRows(rid, row0 + first - start, first + 1,
                                                     last - first))

    def dev(x):
        return x.to(device, non_blocking=True)

    meta = AttentionMetadata(slot_mapping=dev(torch.tensor(slots, dtype=torch.int64)),
                             num_decode_tokens=num_decodes)
    if num_decodes:
        meta.decode_block_tables = dev(_table(tables[:num_decodes]))
        meta.decode_seq_lens = dev(torch.tensor(seq_lens[:num_decodes], dtype=torch.int64))
    if num_decodes < len(order):
        meta.ragged = _ragged(tables[num_decodes:], seq_lens[num_decodes:],
                              query_lens[num_decodes:], dev)
    return StepInputs(dev(torch.tensor(ids, dtype=torch.int64)),
                      dev(torch.tensor(positions, dtype=torch.int64)), meta,
                      sample_rows, sample_ids, prompt_rows)


def _table(tables: list[list[int]]) -> torch.Tensor:
    width = max(len(t) for t in tables)
    table = torch.zeros(len(tables), width, dtype=torch.int64)
    for i, t in enumerate(tables):
        table[i, :len(t)] = torch.tensor(t, dtype=torch.int64)
    return table


def _ragged(tables, seq_lens, query_lens, dev) -> RaggedMetadata:
    q_lens = torch.tensor(query_lens, dtype=torch.int64)
    seq_idx = torch.repeat_interleave(torch.arange(len(query_lens)), q_lens)
    starts = torch.cumsum(q_lens, 0) - q_lens
    query_idx = torch.arange(int(q_lens.sum())) - starts[seq_idx]
    return RaggedMetadata(block_tables=dev(_table(tables)),
                          seq_lens=dev(torch.tensor(seq_lens, dtype=torch.int64)),
                          query_lens=dev(q_lens), token_seq_idx=dev(seq_idx),
                          token_query_idx=dev(query_idx), max_query_len=max(query_lens))
