"""GrammarMasks: a sampling worker's structured outputs: one matcher per constrained
request (xgrammar's for a JSON schema it serves soundly under the default backend "auto":
structured/xgrammar_backend.py; llguidance's otherwise), advanced by its output tokens,
and per step the token bitmask of the rows that sample.

Flow (model_runner.py): a new request with `structured_outputs` gets a matcher (`attach`: a
copy of the compiled grammar, cached by schema: structured/grammar.py); a preempted one
keeps its own. A step with constrained rows is sampled once the tokens before it are known:
`start(states)` takes each row's tokens its matcher has not seen, feeds them to the matchers
(xgrammar's rows in one call; on the helper below instead with FEED_IN_BACKGROUND, the
A/B knob), then (on a helper thread, so the step loop goes on with the
step before's output and the next schedule: BACKGROUND_FILL) fills the rows' masks:
xgrammar's rows in one call (on its threads from ROWS_FOR_THREADS rows), llguidance's on its
threads (up to 16; each grammar is compiled once per thread, and requests get copies in
turn, so rows filled at once rarely share caches and their locks), into a pinned [N, W]
int32 buffer (W = ceil(V / 32); bit j of word w allows token 32w + j; unconstrained rows all
ones; two buffers used in turn); `finish(job)` waits for that and copies the buffer to the
device without waiting; the sampler sets the logits of disallowed tokens to -inf (the
model's ops' `apply_token_bitmask`, through SamplingBatch.apply_mask: one kernel on a GPU).
`bitmask(states)` does both in place. A step without constrained rows costs nothing here and
waits for nothing. The first background fill lowers the process's GIL switch interval
(SWITCH_INTERVAL).
The compilers (the model's tokenizer as the libraries see it, ~1 s) are built on a
background thread at start-up, so the first constrained request does not stall the steps.
A matcher that rejects a token (it cannot happen to a masked token) allows only the end
of the sequence, so its request ends rather than going on unconstrained.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import llguidance.numpy as lgn
import numpy as np
import torch

from tessera.config import EngineConfig
from tessera.structured.xgrammar_backend import XGrammarMatcher, accept_tokens, fill_masks
from tessera.worker.input_batch import RequestState

logger = logging.getLogger(__name__)
MAX_FILL_THREADS = 16  # llguidance's threads filling one step's masks
# xgrammar's threads filling a step's masks from ROWS_FOR_THREADS rows (64 rows on the
# H200's host: 1.45 ms on one thread, 0.88 on four, no better on eight; waking them costs
# ~0.1 ms, more than a few rows take: RESULTS, 2026-12-04)
XGRAMMAR_FILL_THREADS = 4
ROWS_FOR_THREADS = 16
# the process's GIL switch interval once masks are made in the background: the helper
# needs the GIL for a few lines at its start and end, and CPython's default (5 ms) would
# let the step loop keep it that long. Process-wide and kept (sys.setswitchinterval):
# with the offline LLM, the user's own process; any other Python thread there also
# takes the GIL from the loop after 0.2 ms, where it waited 5.
SWITCH_INTERVAL = 0.0002
# A/B knob: a step's masks filled in the background while the engine works on the step
# before (the runner samples the step later: model_runner.py); off, in place
BACKGROUND_FILL = True
# A/B knob (not yet measured on a GPU, so off): the matchers fed on the helper too, before
# it fills, instead of on the step loop (xgrammar: ~4 us a row of the loop's time; the
# helper then takes the GIL three times a step instead of twice)
FEED_IN_BACKGROUND = False


@dataclasses.dataclass
class MaskJob:
    """One step's masks being made: the host buffer [N, W] (None: no constrained row)
    and the background fill (None: done)."""
    host: Optional[torch.Tensor]
    fill: Optional[Future]


@dataclasses.dataclass
class GrammarState:
    matcher: object  # llguidance.LLMatcher, or an XGrammarMatcher
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
        self._xgrammar = None  # structured/xgrammar_backend.py's compiler (backend auto)
        # xgrammar.BatchGrammarMatcher: of one thread and of XGRAMMAR_FILL_THREADS
        self._xgrammar_pools: Optional[tuple] = None
        # host seconds of recent steps' masks: feeding the matchers (the step loop),
        # filling (a helper thread, when in the background) and the step loop's wait for it
        self.timings = {name: deque(maxlen=4096) for name in ("advance", "fill", "wait")}
        self._buffers: Optional[list[torch.Tensor]] = None  # _buffer()'s
        self._helper: Optional[ThreadPoolExecutor] = None  # background fills (`start`)
        self._turn = 0
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
        threads = max(1, min(MAX_FILL_THREADS, (os.cpu_count() or 1) - 1))
        self._executor = llguidance.LLExecutor(num_threads=threads)
        compiler = GrammarCompiler(tokenizer, self.vocab_size, self.eos_token_ids,
                                   families=threads)
        if self.config.model.structured_outputs_backend == "auto":
            self._build_xgrammar(tokenizer, threads, compiler.tokenizer)
        return compiler

    def _build_xgrammar(self, tokenizer, threads: int, llg_tokenizer) -> None:
        try:
            import xgrammar

            from tessera.structured.xgrammar_backend import (XGrammarCompiler,
                                                             vocabulary_mismatches)
            xgr = XGrammarCompiler(tokenizer, self.vocab_size, self.eos_token_ids, threads)
            apart = vocabulary_mismatches(xgr.info, llg_tokenizer, len(tokenizer))
            if apart:
                logger.warning("xgrammar and llguidance read %d tokens' bytes apart (ids %s); "
                               "llguidance makes every mask", len(apart), apart[:8])
                return
            # lazily made masks are shared by a grammar's matchers across threads:
            # xgrammar synchronizes their insertion (its pull requests 795 and 815, which
            # added dynamic compilation); evidence here, not proof:
            # tests/unit/test_xgrammar_backend.py::test_threads_fill_masks_as_one_does
            self._xgrammar_pools = tuple(xgrammar.BatchGrammarMatcher(max_threads=n)
                                         for n in (1, min(threads, XGRAMMAR_FILL_THREADS)))
            self._xgrammar = xgr
        except Exception as e:  # noqa: BLE001 - llguidance serves every grammar then
            logger.warning("xgrammar is unavailable (%s); llguidance makes every mask", e)
            self._xgrammar = None

    @property
    def compiler(self):
        compiler = self._compiler.result() if self._compiler is not None else None
        if compiler is None:
            raise ValueError("structured outputs need the model's tokenizer; this model has "
                             "none.")
        return compiler

    @property
    def schema_library(self) -> str:
        """Which library makes the masks of the JSON schemas xgrammar enforces soundly:
        "xgrammar", or "llguidance" where xgrammar is off, unavailable or read the
        vocabulary apart (waits for the compilers)."""
        self.compiler  # noqa: B018 - built with xgrammar's, on the compiler thread
        return "xgrammar" if self._xgrammar is not None else "llguidance"

    def attach(self, st: RequestState) -> None:
        """Gives a new constrained request its matcher (a grammar the API process checked
        compiles; if it does not here, the request may only end)."""
        so = st.params.structured_outputs
        if so is None or st.grammar is not None:
            return
        try:
            compiler = self.compiler
            # xgrammar's where it serves this grammar soundly (a schema it cannot compile
            # is remembered as llguidance's)
            matcher = self._xgrammar.matcher(so) if self._xgrammar is not None else None
            st.grammar = GrammarState(matcher or compiler.matcher(so))
        except ValueError as e:
            logger.error("request %s: %s", st.request_id, e)
            st.grammar = GrammarState(None, failed=True)

    def bitmask(self, states: list[RequestState]) -> Optional[torch.Tensor]:
        """[N, W] int32 on the device for the sampling rows `states` (their earlier tokens
        known), or None when no row is constrained."""
        return self.finish(self.start(states, in_background=False))

    def start(self, states: list[RequestState], in_background: bool = True) -> "MaskJob":
        """Feeds each constrained row's matcher the tokens it has not seen (here, on the
        step loop, unless FEED_IN_BACKGROUND: xgrammar's rows in one call, llguidance's on
        its threads), then fills the rows' masks: on a helper thread when in_background
        and several rows to fill (a failed matcher's row is written when it is fed), else
        before returning. `finish` gives the device mask. The helper spends its time
        inside the libraries, which let go of the GIL there; it needs the GIL only to
        start and to end (and between feeding and filling), and the step loop hands it
        over within SWITCH_INTERVAL. A matcher is fed again only after `finish`."""
        rows = [(row, st) for row, st in enumerate(states) if st.grammar is not None]
        if not rows:
            return MaskJob(None, None)
        begin = time.perf_counter()
        host, mask = self._buffer(len(states))
        if len(rows) < len(states):  # unconstrained rows allow every token
            constrained = {row for row, _ in rows}
            mask[[r for r in range(len(states)) if r not in constrained]] = -1
        # the tokens each matcher has not seen, taken here: the step loop appends them
        unseen = [(row, st, self._unseen(st)) for row, st in rows]
        if in_background and len(rows) > 1 and FEED_IN_BACKGROUND:
            return MaskJob(host, self._background(self._feed_and_fill, unseen, mask, begin))
        fill = self._feed(unseen, mask, begin)
        if in_background and len(fill) > 1:
            return MaskJob(host, self._background(self._fill, fill, mask))
        self._fill(fill, mask)
        return MaskJob(host, None)

    def _background(self, fn, *args) -> Future:
        """fn(*args) on the helper thread (made, and the switch interval lowered, once)."""
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, "grammar-fill")
            if sys.getswitchinterval() > SWITCH_INTERVAL:
                sys.setswitchinterval(SWITCH_INTERVAL)
        return self._helper.submit(fn, *args)

    def _feed(self, unseen: list, mask: np.ndarray, begin: float) -> list:
        """Feeds the (row, state, unseen tokens) triples' matchers; writes the rows of
        failed ones (only the end of the sequence) -> the (matcher, row) pairs to fill."""
        self._advance([(st, new) for _, st, new in unseen])
        fill = []
        for row, st, _ in unseen:
            if st.grammar.failed:  # only the end of the sequence
                bits = mask.view(np.uint32)
                bits[row] = 0
                for t in self.eos_token_ids:
                    bits[row, t // 32] |= np.uint32(1 << (t % 32))
            else:
                fill.append((st.grammar.matcher, row))
        self.timings["advance"].append(time.perf_counter() - begin)
        return fill

    def _feed_and_fill(self, unseen: list, mask: np.ndarray, begin: float) -> None:
        self._fill(self._feed(unseen, mask, begin), mask)

    def _fill(self, fill: list, mask: np.ndarray) -> None:
        """Fills the masks of `fill`'s (matcher, row) pairs: xgrammar's rows (on its
        threads from ROWS_FOR_THREADS rows), then llguidance's on its threads."""
        begin = time.perf_counter()
        fast = [(m, row) for m, row in fill if isinstance(m, XGrammarMatcher)]
        if fast:
            fill_masks(self._xgrammar_pools[len(fast) >= ROWS_FOR_THREADS], fast, mask)
            fill = [(m, row) for m, row in fill if not isinstance(m, XGrammarMatcher)]
        if len(fill) > 1:  # on llguidance's threads
            lgn.fill_next_token_bitmask_par(self._executor, fill, mask)
        elif fill:  # one row: no thread to wake
            lgn.fill_next_token_bitmask(fill[0][0], mask, fill[0][1])
        self.timings["fill"].append(time.perf_counter() - begin)

    def finish(self, job: "MaskJob") -> Optional[torch.Tensor]:
        """The job's masks [N, W] on the device (the copy started, not waited for), or
        None when no row is constrained; waits for a background fill."""
        if job.host is None:
            return None
        if job.fill is not None:
            start = time.perf_counter()
            job.fill.result()
            self.timings["wait"].append(time.perf_counter() - start)
        return (job.host.to(self.device, non_blocking=True) if self.device.type == "cuda"
                else job.host)

    def _buffer(self, rows: int) -> tuple[torch.Tensor, np.ndarray]:
        """A host buffer [rows, W] int32 (pinned on a GPU; two, used in turn: the copy
        from the one before last is done, the runner waited for that step's tokens) and
        its numpy view."""
        if self._buffers is None or self._buffers[0].shape[0] < rows:
            size = max(rows, 2 * (self._buffers[0].shape[0] if self._buffers else 32))
            pin = self.device.type == "cuda"
            self._buffers = [torch.empty((size, self.words), dtype=torch.int32,
                                         pin_memory=pin) for _ in range(2)]
        self._turn ^= 1
        host = self._buffers[self._turn][:rows]
        return host, host.numpy()

    def _unseen(self, st: RequestState) -> list[int]:
        """st's output tokens its matcher has not been fed (the end-of-sequence and stop
        ids left out: they end the request, not the grammar), counted as fed."""
        g = st.grammar
        new = st.token_ids[st.num_prompt_tokens + g.num_consumed:]
        g.num_consumed += len(new)
        stops = self.eos_token_ids
        return [t for t in new if t not in stops and t not in st.params.stop_token_ids]

    def _advance(self, rows: list[tuple[RequestState, list[int]]]) -> None:
        """Feeds each matcher its unseen tokens (one each, usually: on llguidance's
        threads when several rows have one)."""
        single = []
        for st, new in rows:
            g = st.grammar
            if g.failed or not new:
                continue
            if len(new) == 1:
                single.append((st, new[0]))
                continue
            for t in new:
                if not g.failed and not g.matcher.consume_token(t):
                    self._rejected(st, t)
        fast = [(st, t) for st, t in single if isinstance(st.grammar.matcher, XGrammarMatcher)]
        slow = [(st, t) for st, t in single
                if not isinstance(st.grammar.matcher, XGrammarMatcher)]
        if len(slow) > 1:  # llguidance's, on its threads
            accepted = lgn.consume_token_par(self._executor, [(st.grammar.matcher, t)
                                                              for st, t in slow])
        else:
            accepted = [st.grammar.matcher.consume_token(t) for st, t in slow]
        if fast:  # xgrammar's, in one call without the GIL
            accepted += accept_tokens([(st.grammar.matcher, t) for st, t in fast])
        for (st, t), ok in zip(slow + fast, accepted):
            if not ok:
                self._rejected(st, t)

    @staticmethod
    def _rejected(st: RequestState, token: int) -> None:
        logger.error("request %s: the grammar rejected token %d; only the end of the sequence "
                     "is allowed now", st.request_id, token)
        st.grammar.failed = True
