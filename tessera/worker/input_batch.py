"""The worker's view of its requests and the flat inputs of one step.

Objects: RequestState (what the worker keeps between steps: tokens, blocks, computed
count, sampling settings, its generator), StepInputs (flat tensors for the model plus
which rows sample or score prompt tokens), and `prepare_inputs(states, scheduled)`.
Ragged layout: the new tokens of all requests are packed one after another in
`input_ids` [T]; nothing is padded. A request's draft tokens (speculative decoding:
`RequestState.drafts`) follow its known tokens, and its last known token's row and every
draft's row sample (the rejection sampler judges them together). With async scheduling a
decode's input token may still be on the device (sampled by the step before, not copied
back yet): its row is 0 here and `feed_rows`/`feed_src` say where the runner copies it
from on the device.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
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
    num_unresolved: int = 0  # sampled tokens still on the device (not in token_ids yet)
    sample_row: int = -1  # row of the newest of them in its step's token tensor
    drafts: list[int] = dataclasses.field(default_factory=list)  # this step verifies them
    spec: Any = None  # the speculative proposer's own state of it (spec_decode/)
    grammar: Any = None  # structured outputs: its matcher (worker/grammar_masks.py)

    @property
    def num_known_and_pending(self) -> int:
        return len(self.token_ids) + self.num_unresolved


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
    # (with drafts: its last known token's and each draft's, in order)
    sample_request_ids: list[str]
    prompt_rows: list[PromptLogprobRows]
    feed_rows: Optional[torch.Tensor] = None  # [F] rows of input_ids whose token is ...
    feed_src: Optional[torch.Tensor] = None  # [F] ... the previous step's sampled row
    sample_index: Optional[torch.Tensor] = None  # [N] sample_rows on the device (None:
    # every row samples, in order)


def prepare_inputs(states: dict[str, RequestState], scheduled: dict[str, int],
                   block_size: int, device: torch.device, decodes_first: bool = False,
                   decode_rows_upto: int = 1) -> StepInputs:
    """decodes_first (kernel ops): sequences of up to `decode_rows_upto` tokens (1: the
    decodes; speculative decoding: a verify step's k + 1) go first, one row per token for
    the decode kernel (and CUDA graphs), each row seeing the positions up to its own;
    otherwise every sequence is ragged."""
    order = list(scheduled)
    if decodes_first:
        order = ([r for r in order if scheduled[r] <= decode_rows_upto]
                 + [r for r in order if scheduled[r] > decode_rows_upto])
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    seq_lens, query_lens, tables = [], [], []
    sample_rows, sample_ids, prompt_rows = [], [], []
    feed_rows, feed_src = [], []
    num_decodes = 0  # leading rows that run as one-token sequences
    for rid in order:
        st, n = states[rid], scheduled[rid]
        start, row0 = st.num_computed_tokens, len(ids)
        end = start + n
        blocks = st.block_ids
        decode = decodes_first and n <= decode_rows_upto
        if st.drafts:  # the last known token(s), then the drafts to verify
            ids += (st.token_ids + st.drafts)[start:end]
            positions += range(start, end)
            pos = np.arange(start, end)
            slots += (np.asarray(blocks)[pos // block_size] * block_size
                      + pos % block_size).tolist()
        elif n == 1:  # a decode: the common case, kept cheap
            if start < len(st.token_ids):
                ids.append(st.token_ids[start])
            else:  # sampled by the previous step, still on the device
                feed_rows.append(row0)
                feed_src.append(st.sample_row)
                ids.append(0)
            positions.append(start)
            slots.append(blocks[start // block_size] * block_size + start % block_size)
        else:
            ids += st.token_ids[start:end]
            positions += range(start, end)
            pos = np.arange(start, end)
            slots += (np.asarray(blocks)[pos // block_size] * block_size
                      + pos % block_size).tolist()
        if decode:  # each row its own sequence, seeing the positions up to its own (a
            # verify step's drafts attend to the rows before them, written this step)
            seq_lens += range(start + 1, end + 1)
            query_lens += [1] * n
            tables += [blocks] * n
            num_decodes += n
        else:
            seq_lens.append(end)
            query_lens.append(n)
            tables.append(blocks)
        if end == st.num_known_and_pending + len(st.drafts):
            sample_rows += range(row0 + n - 1 - len(st.drafts), row0 + n)
            sample_ids.append(rid)
        if st.params.prompt_logprobs is not None:
            # position p scores prompt token p + 1
            first = max(start, st.num_prompt_logprobs_done - 1)
            last = min(end, st.num_prompt_tokens - 1)
            if last > first:
                prompt_rows.append(PromptLogprobRows(rid, row0 + first - start, first + 1,
                                                     last - first))

    pack = _Packer()
    ids_t, pos_t, slots_t = pack.add(ids), pack.add(list(positions)), pack.add(slots)
    dec_tables = dec_lens = None
    if num_decodes:
        dec_tables = pack.add_table(tables[:num_decodes])
        dec_lens = pack.add(seq_lens[:num_decodes])
    ragged = None
    if num_decodes < len(tables):
        ragged = _ragged(pack, tables[num_decodes:], seq_lens[num_decodes:],
                         query_lens[num_decodes:])
    feed = (pack.add(feed_rows), pack.add(feed_src)) if feed_rows else None
    every_row = len(sample_rows) == len(ids)  # then sample_rows == range(T)
    sample_t = None if every_row or not sample_rows else pack.add(sample_rows)
    views = pack.to(device)  # one host-to-device copy for the whole step
    meta = AttentionMetadata(slot_mapping=views[slots_t], num_decode_tokens=num_decodes)
    if num_decodes:
        meta.decode_block_tables, meta.decode_seq_lens = views[dec_tables], views[dec_lens]
    if ragged is not None:
        max_query_len = ragged.pop("max_query_len")
        meta.ragged = RaggedMetadata(**{k: views[i] for k, i in ragged.items()},
                                     max_query_len=max_query_len)
    inputs = StepInputs(views[ids_t], views[pos_t], meta, sample_rows, sample_ids, prompt_rows)
    if feed is not None:
        inputs.feed_rows, inputs.feed_src = views[feed[0]], views[feed[1]]
    if sample_t is not None:
        inputs.sample_index = views[sample_t]
    return inputs


class _Packer:
    """Collects int64 arrays, sends them in one copy, hands back device views by index.
    Each view starts on a 16-byte boundary (chunks padded to an even length): Triton
    specializes a kernel on whether its pointers are 16-byte aligned, so views at odd
    offsets would compile new variants of the kernels that read them, mid-serving."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []

    def add(self, values) -> int:
        self.chunks.append(np.asarray(values, dtype=np.int64).reshape(-1))
        return len(self.chunks) - 1

    def add_table(self, tables: list[list[int]]) -> int:
        self.chunks.append(_table(tables))
        return len(self.chunks) - 1

    def to(self, device: torch.device) -> list[torch.Tensor]:
        pad = np.zeros(1, dtype=np.int64)
        parts = []
        for c in self.chunks:
            parts.append(c.reshape(-1))
            if c.size % 2:
                parts.append(pad)
        flat = torch.from_numpy(np.concatenate(parts))
        if device.type == "cuda":
            flat = flat.pin_memory().to(device, non_blocking=True)
        views, offset = [], 0
        for c in self.chunks:
            views.append(flat[offset:offset + c.size].view(c.shape))
            offset += c.size + c.size % 2
        return views


def _table(tables: list[list[int]]) -> np.ndarray:
    width = max(len(t) for t in tables)
    table = np.zeros((len(tables), width), dtype=np.int64)
    for i, t in enumerate(tables):
        table[i, :len(t)] = t
    return table


def _ragged(pack: _Packer, tables, seq_lens, query_lens) -> dict:
    q_lens = np.asarray(query_lens, dtype=np.int64)
    seq_idx = np.repeat(np.arange(len(query_lens)), q_lens)
    starts = np.cumsum(q_lens) - q_lens
    query_idx = np.arange(int(q_lens.sum())) - starts[seq_idx]
    return dict(block_tables=pack.add_table(tables), seq_lens=pack.add(seq_lens),
                query_lens=pack.add(q_lens), token_seq_idx=pack.add(seq_idx),
                token_query_idx=pack.add(query_idx), max_query_len=max(query_lens),
                query_start=pack.add(np.concatenate([[0], np.cumsum(q_lens)])))
