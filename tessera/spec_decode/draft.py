"""DraftModel: a small model with its own paged KV cache that proposes draft tokens.

Objects: DraftModel. It is built beside the target in the same worker (same device,
dtype, kernels and tensor-parallel group: with TP each rank holds its shard, as the
target's) and its KV cache has as many blocks as the target's, addressed by the same
block ids: token i of a request is in block_ids[i // block_size] in both caches, so the
scheduler's block bookkeeping (allocation, lookahead slots, prefix caching, preemption)
serves both, and `bytes_per_block` adds the draft's to the target's when the cache is
sized.
Flow of `propose(states, proposing, ...)` after each verify step:
1. catch up: one ragged forward over the proposing requests, positions
   [draft_valid, upto): the tokens the draft has not seen (the prompt, at first; the
   accepted drafts it had not written and the token sampled after them; what came while
   the request did not speculate). `upto` counts every known token;
2. the proposing requests' last rows give draft 1 (greedy requests: the argmax; others a
   draw from the request's distribution q, kept for the rejection sampler);
3. k - 1 one-token steps (decode graphs where captured) give drafts 2..k; each step's
   input ids are the step before's drafts, fed on the device, so the host waits once,
   for all the drafts at the end. The catch-up too runs as one-token rows (a graph)
   when it is at most k + 1 tokens, as it is in steady state.
Draft KV written at the draft positions stays valid for the drafts the target accepts:
the next catch-up starts after the longest run of proposed drafts that came true. A new
(or resumed) request's draft starts from position 0 whatever the target found in the
prefix cache: the draft's KV in a shared block may never have been written (its
request did not speculate), so it is written again (the same tokens, the same values).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch

from tessera.config import EngineConfig, QuantConfig
from tessera.layers.context import make_context
from tessera.layers.ops import make_ops
from tessera.layers.sampler import SamplingBatch, probabilities, race
from tessera.models.loader import load_model
from tessera.quant.accounting import weight_bytes_by_precision
from tessera.quant_policy import resolve_policy
from tessera.worker.input_batch import RequestState, prepare_inputs

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DraftProgress:
    """The draft's view of one request, kept on its RequestState (`spec`)."""
    valid: int = 0  # leading positions whose draft KV holds the request's true tokens
    upto: int = 0  # known tokens when the last proposal was made
    proposed: list[int] = dataclasses.field(default_factory=list)
    q: Optional[torch.Tensor] = None  # [k, V] the drawn drafts' distributions (zeros: argmax)


class DraftModel:
    def __init__(self, config: EngineConfig, device: torch.device, dtype: torch.dtype,
                 kv_dtype: torch.dtype, block_size: int):
        info = config.draft_info
        draft_config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, model=info.path),
            quant=QuantConfig(quantization=config.speculative.speculative_quantization),
            model_info=info, draft_info=None)
        ops = make_ops(config.kernel, device)
        policy = resolve_policy(draft_config.quant, info, native=ops.kernels)
        self.context = make_context(config.kernel, device, policy, ops)
        self.model = load_model(draft_config, device, dtype, self.context)
        self.device, self.kv_dtype, self.block_size = device, kv_dtype, block_size
        self.decodes_first = ops.decodes_first
        # catch-up steps of a few tokens (the accepted drafts and the one after; what came
        # since a request's last probe) run as one-token decode rows, in the draft's graphs
        self.decode_rows_upto = max(config.speculative.num_speculative_tokens + 1, 16)
        self.kv_specs = self.model.kv_cache_specs()
        self.kv_caches: list[torch.Tensor] = []
        self.graphs = None
        self.bytes_by_precision = weight_bytes_by_precision(self.model)
        self.weight_bytes = sum(self.bytes_by_precision.values())

    @property
    def bytes_per_block(self) -> int:
        return sum(spec.bytes_per_block(self.block_size, self.kv_dtype.itemsize)
                   for spec in self.kv_specs)

    def init_kv_cache(self, num_blocks: int) -> None:
        """As many blocks as the target's, plus the scratch block (id num_blocks)."""
        self.kv_caches = [torch.zeros((2, num_blocks + 1, self.block_size, spec.num_kv_heads,
                                       spec.head_dim), dtype=self.kv_dtype, device=self.device)
                          for spec in self.kv_specs]

    def capture_graphs(self, max_batch: int, max_blocks: int, num_blocks: int) -> None:
        from tessera.worker.cuda_graphs import DecodeGraphs, default_buckets
        self.graphs = DecodeGraphs(self.model, self.kv_caches, max_batch, max_blocks,
                                   num_blocks, self.block_size, self.device)
        self.graphs.capture(default_buckets(max_batch, every_upto=8))

    @torch.inference_mode()
    def propose(self, states: list[RequestState], proposing: dict[str, int],
                batch_of, argmax) -> dict[str, tuple[list[int], Optional[torch.Tensor]]]:
        """states: every request of the step; proposing: request id -> drafts wanted (k);
        batch_of(states) -> their SamplingBatch. -> request id -> (drafts, q [k, V] float32
        of the drafts that were drawn, or None when all were argmaxes)."""
        views, scheduled = {}, {}
        for st in states:
            if st.request_id not in proposing:
                continue
            if not isinstance(st.spec, DraftProgress):  # new, or resumed after preemption
                st.spec = DraftProgress()
            prog = st.spec
            if prog.proposed:  # drafts written at [upto, upto + k - 1) that came true
                true = st.token_ids[prog.upto:prog.upto + len(prog.proposed) - 1]
                run = next((i for i, (a, b) in enumerate(zip(true, prog.proposed))
                            if a != b), len(true))
                prog.valid = max(prog.valid, min(prog.upto + run, len(st.token_ids)))
                prog.proposed = []
            upto = len(st.token_ids)
            prog.valid = min(prog.valid, upto)
            if prog.valid == upto:
                prog.valid -= 1  # the last known token is the input that gives draft 1
            if upto > prog.valid:
                views[st.request_id] = _view(st, st.token_ids[:upto], prog.valid)
                scheduled[st.request_id] = upto - prog.valid
                prog.valid = upto
        if not proposing:
            return {}
        hidden, inputs = self._forward(views, scheduled)
        order = [rid for rid in inputs.sample_request_ids if rid in proposing]
        last_row = dict(zip(inputs.sample_request_ids, inputs.sample_rows))  # one each
        by_id = {st.request_id: st for st in states}
        live = [by_id[rid] for rid in order]
        batch = batch_of(live)
        greedy = [st.params.greedy for st in live]
        # drafts stay on the device until the last step: one wait per proposal
        tokens, q = self._draw(hidden[[last_row[rid] for rid in order]], batch, argmax)
        columns, q_columns = [tokens], [q]  # per draft step: [N] ids, [N, V] or None
        want = [proposing[rid] for rid in order]
        for step in range(1, max(want)):
            go = [i for i, k in enumerate(want) if k > step]
            sub_views = {}
            for i in go:
                st = live[i]
                known = st.token_ids + [0] * step  # the drafts' ids are fed on the device
                sub_views[st.request_id] = _view(st, known, len(known) - 1)
            feed = tokens if len(go) == len(order) else tokens[go]
            hidden, inputs = self._forward(sub_views, dict.fromkeys(sub_views, 1), feed)
            sub_batch = batch if len(go) == len(order) else batch_of([live[i] for i in go])
            drawn, q = self._draw(hidden, sub_batch, argmax)
            tokens = drawn if len(go) == len(order) else tokens.index_copy(
                0, torch.tensor(go, device=tokens.device), drawn)
            if q is not None and len(go) < len(order):
                full = torch.zeros((len(order), q.shape[1]), device=q.device)
                q = full.index_copy(0, torch.tensor(go, device=q.device), q)
            columns.append(tokens)
            q_columns.append(q)
        table = torch.stack(columns, dim=1).tolist()  # [N, steps]
        out = {}
        for i, st in enumerate(live):
            rid, k = st.request_id, want[i]
            drafts = table[i][:k]
            st.spec.upto, st.spec.proposed = len(st.token_ids), list(drafts)
            q_rows = None
            if not greedy[i] and q_columns[0] is not None:
                q_rows = torch.stack([qc[i] for qc in q_columns[:k]])
            out[rid] = (drafts, q_rows)
        return out

    def _forward(self, views, scheduled, feed: Optional[torch.Tensor] = None):
        """feed: [rows] the input ids, on the device (one-token steps)."""
        inputs = prepare_inputs(views, scheduled, self.block_size, self.device,
                                self.decodes_first, self.decode_rows_upto)
        if feed is not None:
            inputs.input_ids.copy_(feed)
        hidden = self.graphs.run(inputs) if self.graphs is not None else None
        if hidden is None:
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
        return hidden, inputs

    def _draw(self, hidden, batch: SamplingBatch, argmax):
        """One draft per row -> ([N] ids on the device, q [N, V] float32 or None): the
        argmax for greedy rows, else a draw from the request's distribution q."""
        if batch.all_greedy:
            return argmax(self.model.compute_logits(hidden, as_float=False)), None
        logits = self.model.compute_logits(hidden)  # [N, V] float32
        q = probabilities(logits, batch)
        drawn = race(q, batch.generators, argmax, batch.shared_generator)
        return torch.where(batch.temperature < 1e-5, argmax(logits), drawn), q


def _view(st: RequestState, tokens: list[int], start: int) -> RequestState:
    """The draft's state of a request: its tokens up to what the draft computes, from
    `start` (no prompt logprobs; its own block ids)."""
    params = st.params if st.params.prompt_logprobs is None else dataclasses.replace(
        st.params, prompt_logprobs=None)
    return RequestState(st.request_id, tokens, st.num_prompt_tokens, params, st.block_ids,
                        start, 0)
