"""GrammarMasks: a sampling worker's structured outputs: one llguidance matcher per
constrained request, advanced by its output tokens, and per step the token bitmask of
the rows that sample.

Flow (model_runner.py): a new request with `structured_outputs` gets a matcher
(`attach`: a copy of the compiled grammar, cached by schema: structured/grammar.py); a
preempted one keeps its own. In a step with constrained rows, after the forward is
queued on the device, the runner waits for the earlier steps' tokens (their copies are
done by then: the device is busy with this step's forward) and `bitmask(states)` feeds
each matcher the tokens it has not seen, then fills the rows' masks on llguidance's
threads into a pinned [N, W] int32 array (W = ceil(V / 32); bit j of word w allows token
32w + j; unconstrained rows all ones) and copies it to the device without waiting; the
sampler sets the logits of disallowed tokens to -inf (layers/sampler.py
`apply_token_bitmask`). A step
without constrained rows costs nothing here and waits for nothing.
The compiler (the model's tokenizer as llguidance sees it, ~0.5 s) is built on a
background thread at start-up, so the first constrained request does not stall the steps.
A matcher that rejects a token (it cannot happen to a masked token) allows only the end
of the sequence, so its request ends rather than going on unconstrained.
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from tessera.config import EngineConfig
from tessera.worker.input_batch import RequestState

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GrammarState:
    matcher: object  # llguidance.LLMatcher
    num_consumed: int = 0  # output tokens fed to the matcher
    failed: bool = False


class GrammarMasks:
    def __init__(self, config: EngineConfig, device: torch.device):
        self.config = config
        self.device = device
        self.vocab_size = config.info.arch.vocab_size
        self.eos_token_ids = list(config.info.arch.eos_token_ids)
        self.words = (self.vocab_size + 31) // 32
        self._compiler: Optional[Future] = None
        self._executor = None  # llguidance.LLExecutor, made with the compiler
        if not config.model.skip_tokenizer_init:
            self._compiler = ThreadPoolExecutor(1, "grammar-compiler").submit(self._build)

    def _build(self):
        import llguidance

        from tessera.frontend.tokenizer import load_tokenizer
        from tessera.models.source import ModelSource
        from tessera.structured.grammar import GrammarCompiler
        info = self.config.info
        tokenizer = load_tokenizer(self.config.model, ModelSource(info.kind, info.path,
                                                                  info.arch))
        if tokenizer is None:
            return None
        self._executor = llguidance.LLExecutor()
        return GrammarCompiler(tokenizer, self.vocab_size, self.eos_token_ids)

    @property
    def compiler(self):
        compiler = self._compiler.result() if self._compiler is not None else None
        if compiler is None:
            raise ValueError("structured outputs need the model's tokenizer; this model has "
                             "none.")
        return compiler

    def attach(self, st: RequestState) -> None:
        """Gives a new constrained request its matcher (a grammar the API process checked
        compiles; if it does not here, the request may only end)."""
        so = st.params.structured_outputs
        if so is None or st.grammar is not None:
            return
        try:
            st.grammar = GrammarState(self.compiler.matcher(so))
        except ValueError as e:
            logger.error("request %s: %s", st.request_id, e)
            st.grammar = GrammarState(None, failed=True)

    def bitmask(self, states: list[RequestState]) -> Optional[torch.Tensor]:
        """[N, W] int32 on the device for the sampling rows `states` (their earlier tokens
        known), or None when no row is constrained."""
        rows = [(row, st.grammar) for row, st in enumerate(states) if st.grammar is not None]
        if not rows:
            return None
        mask = np.full((len(states), self.words), -1, dtype=np.int32)
        fill = []
        for row, g in rows:
            self._advance(states[row], g)
            if g.failed:
                bits = mask.view(np.uint32)
                bits[row] = 0
                for t in self.eos_token_ids:
                    bits[row, t // 32] |= np.uint32(1 << (t % 32))
            else:
                fill.append((g.matcher, row))
        if fill:
            import llguidance.numpy as lgn
            lgn.fill_next_token_bitmask_par(self._executor, fill, mask)
        host = torch.from_numpy(mask)
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _advance(self, st: RequestState, g: GrammarState) -> None:
        outputs = st.token_ids[st.num_prompt_tokens + g.num_consumed:]
        g.num_consumed += len(outputs)
        stops = set(self.eos_token_ids) | set(st.params.stop_token_ids)
        for t in outputs:
            if g.failed or t in stops:
                continue
            if not g.matcher.consume_token(t):
                logger.error("request %s: the grammar rejected token %d; only the end of the "
                             "sequence is allowed now", st.request_id, t)
                g.failed = True
