"""ModelRunner: owns the model, the paged KV cache tensors and the per-request state of
one device; turns a SchedulerOutput into a ModelRunnerOutput.

Flow of `execute(sched)` = `submit(sched)` then `collect()`. `submit`: apply the
scheduler's diffs to RequestStates (new requests in full, new block ids for running
ones, forget finished/preempted) -> `prepare_inputs` (flat ids, positions, attention
metadata; decode tokens the previous step sampled are fed from its token tensor on the
device) -> model forward -> LM head on the rows that sample or score prompt tokens ->
sample (tokens stay on the device; a non-blocking copy to pinned memory starts) ->
returns without waiting. `collect`: waits for the oldest step's copy, appends its tokens
to the states and returns its ModelRunnerOutput. Async scheduling submits step N+1
before collecting step N. A step with grammar rows (structured outputs) leaves its
sampling for later: its masks need step N's tokens, so `collect(N)` starts filling them
on a helper thread (worker/grammar_masks.py) and the step is sampled when the next step
is submitted (or when it is itself collected), so the engine's own work on step N's
output and the next schedule overlaps the fill.
Faults (worker/step_faults.py), once serving: an exception setting up one new request's
state fails that request alone; any other exception in a step that is not the device's
fails that step's requests. Either way they are reported in the output's `failed`, their
state is dropped (later steps that still schedule them skip them, the same on every rank)
and the runner goes on; device failures propagate (fatal).
`num_kv_blocks()` sizes the cache (worker/memory.py `kv_blocks_that_fit`, after a
profiling pass that `run_prompt` runs).
The runner is built by a Worker (worker/worker.py) on its device and dtype; the model and
the runner share one LayerContext (layers/context.py), so the ops the runner asks (decode
rows first? which argmax?) are the ones the model's layers run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from typing import Optional

import torch

from tessera.config import EngineConfig
from tessera.distributed.parallel_state import pp_stage, recv_from_prev, send_to_next
from tessera.engine.protocol import (ModelRunnerOutput, NewRequestData, SchedulerOutput,
                                     WorkerInfo)
from tessera.layers.context import make_context
from tessera.layers.ops import make_ops
from tessera.quant.accounting import weight_bytes_by_precision
from tessera.quant.calibrate import calibrate, check_calibration, deferred_int4
from tessera.quant_policy import check_patterns, resolve_policy
from tessera.layers.moe import FUSED_MAX_TOKENS, fused_moe_captures
from tessera.layers.sampler import gather_logprobs, sample
from tessera.models.loader import load_model
from tessera.quant.kv_cache import resolve_kv_cache_dtype
from tessera.sampling_params import SamplingParams
from tessera.spec_decode.decoder import SpecDecoder
from tessera.worker.cuda_graphs import DecodeGraphs, default_buckets
from tessera.worker import grammar_masks
from tessera.worker.grammar_masks import GrammarMasks, MaskJob
from tessera.worker.input_batch import RequestState, prepare_inputs
from tessera.worker.sampling_inputs import MASKS_HERE, SamplingInputs, needs_history
from tessera.worker.kv_host_tier import KVHostTier
from tessera.worker.memory import allocator_memory, kv_blocks_that_fit, setup_memory
from tessera.worker.step_faults import is_device_failure, request_failures, without_requests
from tessera.worker.warm_up import warm_up

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _StepInFlight:
    states: list[RequestState]  # the sampling requests, in row order
    tokens: Optional[torch.Tensor]  # [N] int64 on the device (None: nothing sampled)
    host: Optional[torch.Tensor]  # [N] pinned copy of tokens, filled without blocking
    ready: Optional[torch.cuda.Event]
    logprobs: dict
    prompt_logprobs: dict
    resolved: bool = False
    output: Optional[ModelRunnerOutput] = None  # a speculative step's, complete already
    failed: dict = dataclasses.field(default_factory=dict)  # request id -> message
    logits: Optional[torch.Tensor] = None  # [N, V] while its sampling waits for masks
    masks: Optional[MaskJob] = None  # those masks, being made

    @classmethod
    def nothing_sampled(cls) -> "_StepInFlight":
        return cls([], None, None, None, {}, {}, True)


class ModelRunner:
    def __init__(self, config: EngineConfig, device: torch.device, dtype: torch.dtype):
        self.config = config
        self.device, self.dtype = device, dtype
        self.kv_dtype = resolve_kv_cache_dtype(config.cache.kv_cache_dtype, self.dtype,
                                               self.device)  # the model's, or fp8
        self.block_size = config.cache.block_size
        # bytes of the GPU in use before this engine allocated anything: other processes'
        # (engines sharing the GPU: a deployment's models) and this process's CUDA context
        self.used_at_start = 0
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            self.used_at_start = total - free
        self.arch = config.info.arch
        self.max_model_len = config.max_model_len
        ops = make_ops(config.kernel, device)  # where kernels run, a GGUF stays quantized
        policy = resolve_policy(config.quant, config.info, native=ops.kernels)
        self.context = make_context(config.kernel, device, policy, ops)
        self.ops = self.context.ops
        start = time.perf_counter()
        load_context, deferred = self.context, {}
        if config.quant.quantization_calibration:  # int4 layers load 16-bit; GPTQ below
            check_calibration(config, policy)
            load_context, deferred = deferred_int4(self.context)
        self.model = load_model(config, device, dtype, load_context)
        if policy.quantized:  # a pattern naming no layer is a mistake, not a no-op
            check_patterns(policy, self.context.layer_names, config.info.arch.num_layers)
        self.load_seconds = time.perf_counter() - start
        self.bytes_by_precision = weight_bytes_by_precision(self.model)  # {"int8": bytes, ...}
        self.weight_bytes = sum(self.bytes_by_precision.values())
        self.kv_specs = self.model.kv_cache_specs()  # one per local layer
        self.kv_heads = self.kv_specs[0].num_kv_heads if self.kv_specs else 1
        self.kv_caches: list[torch.Tensor] = []
        self.graphs: Optional[DecodeGraphs] = None
        self.graph_bytes = 0  # what capturing the decode graphs reserved
        self.kv_host: Optional[KVHostTier] = None  # the KV cache's host tier
        self.weight_stream = self.model.weight_stream  # offloaded layers (None: none)
        self._memory_sent = 0.0  # when a step's output last carried the allocator's figures
        self.stage = pp_stage()
        self.states: dict[str, RequestState] = {}
        self.isolate_faults = False  # on once serving: start-up and warm-up stay loud
        self._dropped: set[str] = set()  # failed here; skipped until the core finishes them
        self._failed: dict[str, str] = {}  # request id -> message, for the next output
        self._in_flight: deque[_StepInFlight] = deque()
        self._last_tokens: Optional[torch.Tensor] = None  # the newest step's sampled ids
        self._unsampled: Optional[_StepInFlight] = None  # its sampling waits for masks
        default_generator = torch.Generator(device=self.device).manual_seed(config.model.seed)
        self.spec: Optional[SpecDecoder] = None  # speculative decoding (spec_decode/)
        self.decode_rows_upto = 1  # verify steps of k + 1 tokens run as decode rows
        # structured outputs: the matchers and per-step token masks (where tokens are sampled)
        self.grammars = GrammarMasks(config, device) if self.stage.last else None
        self.sampling = SamplingInputs(device, default_generator, self.arch.eos_token_ids,
                                       self.grammars, self.ops.apply_token_bitmask)
        if config.speculative.method is not None:
            self.decode_rows_upto = config.speculative.num_speculative_tokens + 1
            self.spec = SpecDecoder(config, device, dtype, self.kv_dtype, self.block_size)
        if deferred:  # the model runs now: its int4 layers quantized against their inputs
            calibrate(self, deferred)
            self.load_seconds = time.perf_counter() - start
            self.bytes_by_precision = weight_bytes_by_precision(self.model)
            self.weight_bytes = sum(self.bytes_by_precision.values())
        if self.spec is not None:
            self.weight_bytes += self.spec.proposer.weight_bytes

    # -- KV cache ------------------------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        """The target's KV bytes of one block, plus a draft model's (same block ids)."""
        draft = self.spec.proposer.bytes_per_block if self.spec is not None else 0
        return draft + sum(spec.bytes_per_block(self.block_size, self.kv_dtype.itemsize)
                           for spec in self.kv_specs)

    def info(self, world_size: int = 1) -> WorkerInfo:
        """What the engine logs and reports of this worker: device, dtypes, weights."""
        return WorkerInfo(str(self.device), str(self.dtype).removeprefix("torch."),
                          str(self.kv_dtype).removeprefix("torch."), self.weight_bytes / 2**30,
                          self.load_seconds, self.bytes_per_block, world_size,
                          self.context.describe(self.dtype), dict(self.bytes_by_precision),
                          setup_memory(self))

    def num_kv_blocks(self) -> int:
        """The cache blocks that fit (worker/memory.py: a profiled pass on the GPU)."""
        return kv_blocks_that_fit(self)

    @torch.inference_mode()
    def run_prompt(self, token_ids: list[int]) -> None:
        """One prefill of token_ids (at most a step's token budget) in a KV cache of its
        own, nothing kept: the memory profile's pass, and calibration's (quant/calibrate.py)."""
        n = len(token_ids)
        blocks = -(-n // self.block_size)
        self.init_kv_cache(blocks, for_serving=False)
        req = NewRequestData("profile", list(token_ids), n, SamplingParams(max_tokens=1),
                             list(range(blocks)), 0, 0)
        try:
            self.execute(SchedulerOutput([req], [], {"profile": n}, set(), set()))
        finally:
            self.states.clear()
            self.kv_caches = []

    def init_kv_cache(self, num_blocks: int, for_serving: bool = True,
                      num_host_blocks: int = 0) -> None:
        """Allocates the blocks, plus one scratch block (id num_blocks) that padded rows of
        a CUDA-graph batch write to, and the KV host tier's (worker/kv_host_tier.py); then,
        for serving (not for the profiling pass), captures the decode graphs and runs the
        warm-up steps (worker/warm_up.py) that compile the kernels' remaining variants."""
        self.kv_caches = [torch.zeros((2, num_blocks + 1, self.block_size, spec.num_kv_heads,
                                       spec.head_dim), dtype=self.kv_dtype, device=self.device)
                          for spec in self.kv_specs]
        self.kv_host = (KVHostTier(self.kv_caches, num_host_blocks, self.device)
                        if num_host_blocks else None)
        draft = getattr(self.spec, "proposer", None)
        if hasattr(draft, "init_kv_cache"):
            draft.init_kv_cache(num_blocks)
        on_gpu = self.device.type == "cuda" and self.ops.kernels
        moe_ok = not self.arch.num_experts or fused_moe_captures(self.config.kernel, self.ops)
        stream_ok = self.weight_stream is None or self.weight_stream.capturable
        if for_serving and on_gpu and not stream_ok:
            logger.info("decode steps run eagerly: the offloaded layers come from a file, and "
                        "each copy waits on the host for its read")
        if (for_serving and on_gpu and not self.config.model.enforce_eager
                and self.stage.size == 1  # graphs hold no send/recv between stages
                and moe_ok  # MoE: the expert ids stay on the device
                and stream_ok):
            reserved = torch.cuda.memory_reserved(self.device)
            self._capture_graphs(num_blocks)
            self.graph_bytes = torch.cuda.memory_reserved(self.device) - reserved
        if for_serving and on_gpu:
            start = time.perf_counter()
            if warm_up(self):
                logger.info("warm-up steps took %.1f s", time.perf_counter() - start)
        self.isolate_faults = for_serving

    def _capture_graphs(self, num_blocks: int) -> None:
        start = time.perf_counter()
        max_len = self.max_model_len
        max_batch = min(self.config.scheduler.max_num_seqs, 512)
        if self.arch.num_experts:  # a MoE step in a graph must take the device kernels
            max_batch = min(max_batch, FUSED_MAX_TOKENS)
        self.graphs = DecodeGraphs(self.model, self.kv_caches, max_batch,
                                   -(-max_len // self.block_size), num_blocks, self.block_size,
                                   self.device, self.weight_stream)
        spec = self.config.speculative
        every = 2 * (spec.num_speculative_tokens + 1) if spec.method else 1
        sizes = default_buckets(max_batch, every)
        self.graphs.capture(sizes)
        draft = getattr(self.spec, "proposer", None)
        if hasattr(draft, "capture_graphs"):
            draft.capture_graphs(max_batch, -(-max_len // self.block_size), num_blocks)
        logger.info("captured %d decode CUDA graphs (batch %d..%d) in %.1f s", len(sizes),
                    sizes[0], sizes[-1], time.perf_counter() - start)

    # -- one step ------------------------------------------------------------------------
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self.submit(sched)
        return self.collect()

    @torch.inference_mode()
    def submit(self, sched: SchedulerOutput) -> None:
        """Queues the step on the device; returns before its tokens are back. A fault
        that is not the device's fails the step's requests (module docstring)."""
        if sched.scheduled_spec_token_ids and self.spec is None:
            raise NotImplementedError("draft tokens were scheduled but this engine has no "
                                      "speculative decoding configured")
        self._sample_unsampled()  # the step before, whose tokens this one's inputs take
        self._step_start = time.perf_counter()
        if self.kv_host is not None:  # evicted blocks out, found ones back, before the forward
            self.kv_host.apply(sched.kv_to_host, sched.kv_to_device)
        self._update_states(sched)
        if self._dropped:
            sched = without_requests(sched, self._dropped)
        last_tokens = self._last_tokens
        try:
            self._submit(sched)
        except Exception as e:
            self._drop(list(sched.num_scheduled_tokens), e, "a step")
            self._last_tokens = last_tokens  # the feed of later steps stays the one before
            self._in_flight.append(_StepInFlight.nothing_sampled())
        self._in_flight[-1].failed, self._failed = self._failed, {}

    def _submit(self, sched: SchedulerOutput) -> None:
        for rid, drafts in sched.scheduled_spec_token_ids.items():
            self.states[rid].drafts = list(drafts)
        if sched.is_empty:
            self._in_flight.append(_StepInFlight.nothing_sampled())
            return
        inputs = prepare_inputs(self.states, sched.num_scheduled_tokens, self.block_size,
                                self.device, self.ops.decodes_first, self.decode_rows_upto)
        if inputs.feed_rows is not None:  # decode inputs sampled by the step before
            inputs.input_ids[inputs.feed_rows] = self._last_tokens[inputs.feed_src]
        hidden = self.graphs.run(inputs) if self.graphs is not None else None
        if hidden is None:
            hidden = self._forward(inputs)
        for rid, n in sched.num_scheduled_tokens.items():
            self.states[rid].num_computed_tokens += n
        if not self.stage.last:  # hidden states went on to the next stage
            self._in_flight.append(_StepInFlight.nothing_sampled())
            return
        prompt_logprobs = self._prompt_logprobs(hidden, inputs.prompt_rows)
        if self.spec is not None and (sched.scheduled_spec_token_ids or sched.num_drafts):
            self._in_flight.append(self._speculative_step(sched, hidden, inputs,
                                                          prompt_logprobs))
            return
        states = [self.states[rid] for rid in inputs.sample_request_ids]
        step = _StepInFlight(states, None, None, None, {}, prompt_logprobs)
        if states:
            rows = hidden if inputs.sample_index is None else hidden[inputs.sample_index]
            greedy = all(self.sampling.plain_greedy(st) for st in states)  # no settings to gather
            # [N, V]; a plain greedy step's argmax reads the model's dtype, no float32 copy
            step.logits = self.model.compute_logits(rows, as_float=not greedy)
            if (any(st.grammar for st in states) and self.spec is None
                    and grammar_masks.BACKGROUND_FILL):
                self._unsampled = step  # sampled by `_sample_unsampled` (module docstring)
            else:
                self._sample(step, greedy)
        self._in_flight.append(step)

    def _sample_unsampled(self) -> None:
        """Samples the step whose sampling waits for its masks (before the next step's
        inputs, which take its tokens, and before its own tokens are collected); a fault
        in it fails that step's requests (module docstring)."""
        step, self._unsampled = self._unsampled, None
        if step is None:
            return
        last_tokens = self._last_tokens
        try:
            self._sample(step, False)
        except Exception as e:
            self._drop([st.request_id for st in step.states], e, "sampling a step", step)
            self._last_tokens, step.tokens = last_tokens, None

    def _sample(self, step: _StepInFlight, greedy: bool) -> None:
        """Samples step's rows from its logits; the tokens stay on the device (a copy to
        pinned memory starts)."""
        states, logits, step.logits = step.states, step.logits, None
        if greedy:
            step.tokens = self.ops.argmax(logits)
        else:
            if any(needs_history(st.params) or st.grammar for st in states):
                self._resolve_all()  # penalties and grammars read every output token
            allowed = MASKS_HERE
            if step.masks is not None:  # filled in the background since its tokens came
                allowed, step.masks = self.grammars.finish(step.masks), None
            step.tokens, entries = sample(logits, self.sampling.batch(states, allowed=allowed),
                                          self.ops.argmax)
            step.logprobs = {st.request_id: [e] for st, e in zip(states, entries)
                             if e is not None}
        for row, st in enumerate(states):
            st.num_unresolved += 1
            st.sample_row = row
        self._last_tokens = step.tokens
        if self.device.type == "cuda":
            step.host = torch.empty(len(states), dtype=torch.int64, pin_memory=True)
            step.host.copy_(step.tokens, non_blocking=True)
            step.ready = torch.cuda.Event()
            step.ready.record()

    def _speculative_step(self, sched: SchedulerOutput, hidden, inputs,
                          prompt_logprobs: dict) -> _StepInFlight:
        """Verifies the drafts (every sampling row at once), then proposes the next
        step's drafts; the whole output is known when it returns (spec_decode/). A step
        with no drafts to verify or propose samples as without speculation (its tokens
        may stay on the device)."""
        self._resolve_all()  # tokens of an earlier plain step first, in order
        states = [self.states[rid] for rid in inputs.sample_request_ids]
        out = ModelRunnerOutput({}, {}, prompt_logprobs)
        if states:
            rows = hidden if inputs.sample_index is None else hidden[inputs.sample_index]
            greedy = all(self.sampling.plain_greedy(st) for st in states)
            logits = self.model.compute_logits(rows, as_float=not greedy)  # [R, V]
            emitted, entries = self.spec.verify(logits, states, self.sampling.batch,
                                                self.ops.argmax, greedy)
            self.spec.note_verify_time(time.perf_counter() - self._step_start)
            out.sampled_token_ids = {st.request_id: t for st, t in zip(states, emitted)}
            out.logprobs = {st.request_id: e for st, e in zip(states, entries) if e}
        step_states = [self.states[rid] for rid in sched.num_scheduled_tokens]
        out.spec_token_ids = self.spec.propose(step_states, states, sched.num_drafts,
                                               self.sampling.batch, self.ops.argmax)
        out.draft_cost = self.spec.draft_cost
        step = _StepInFlight.nothing_sampled()
        step.output = out
        return step

    def collect(self) -> ModelRunnerOutput:
        """The oldest submitted step's output (waits for its tokens). Then, if the next
        step's sampling waits for masks, they start being filled in the background."""
        step = self._in_flight.popleft()
        if step is self._unsampled:
            self._sample_unsampled()
        if step.output is not None:
            out = step.output
        else:
            try:
                tokens = self._resolve(step)
            except Exception as e:
                self._drop([st.request_id for st in step.states], e, "collecting a step", step)
                tokens = []
            sampled = {st.request_id: [tok] for st, tok in zip(step.states, tokens)}
            out = ModelRunnerOutput(sampled, step.logprobs, step.prompt_logprobs)
        out.failed.update(step.failed)
        waiting = self._unsampled
        if waiting is not None and self._in_flight and self._in_flight[0] is waiting:
            waiting.masks = self.grammars.start(waiting.states)  # every earlier token known
        now = time.monotonic()
        if now - self._memory_sent > 1.0 and self.device.type == "cuda":
            self._memory_sent = now  # the allocator's figures, for /metrics
            out.memory = allocator_memory(self.device)
        return out

    def _resolve(self, step: _StepInFlight) -> list[int]:
        """Waits for the step's tokens and appends them to their requests (once)."""
        if step.tokens is None:
            return []
        if step.ready is not None:
            step.ready.synchronize()
        tokens = (step.host if step.host is not None else step.tokens).tolist()
        if not step.resolved:
            step.resolved = True
            for st, tok in zip(step.states, tokens):
                if self.states.get(st.request_id) is st:  # not finished or replaced since
                    st.token_ids.append(tok)
                    st.num_unresolved -= 1
        return tokens

    def _resolve_all(self) -> None:
        for step in self._in_flight:
            self._resolve(step)

    def _forward(self, inputs):
        """This stage's layers; between stages, (hidden, residual) [T, H] each go on."""
        intermediate = None
        if not self.stage.first:
            shape = (inputs.input_ids.shape[0], self.arch.hidden_size)
            intermediate = recv_from_prev([shape, shape], self.dtype, self.device)
        out = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta,
                         intermediate)
        if not self.stage.last:
            send_to_next(list(out))
        return out

    def _drop(self, request_ids: list[str], exc: Exception, what: str,
              step: Optional[_StepInFlight] = None) -> None:
        """Called while exc is being handled: re-raises it when it is fatal (the device's,
        or before serving); else these requests failed: their state goes, and the output
        of `step` (default: the next step submitted) says why."""
        if not self.isolate_faults or is_device_failure(exc):
            raise  # the exception being handled, its traceback whole
        failed = request_failures(request_ids, exc, what)
        (step.failed if step is not None else self._failed).update(failed)
        for rid in request_ids:
            self.states.pop(rid, None)
            self._dropped.add(rid)

    def _update_states(self, sched: SchedulerOutput) -> None:
        for rid in sched.finished_request_ids:
            self.states.pop(rid, None)
            self._dropped.discard(rid)
        for rid in sched.preempted_request_ids:
            if rid in self.states:  # keep the generator: its draws continue after resumption
                self.states[rid].block_ids = []
        for new in sched.new_requests:
            if new.request_id in self._dropped:
                continue
            try:
                self._add_state(new)
            except Exception as e:  # one request's settings cannot fail the others
                self._drop([new.request_id], e, "setting up a request")
        for cached in sched.cached_requests:
            if cached.request_id in self._dropped:
                continue
            st = self.states[cached.request_id]
            st.block_ids.extend(cached.new_block_ids)
            start = st.num_computed_tokens
            st.token_ids[start:start + len(cached.new_token_ids)] = cached.new_token_ids

    def _add_state(self, new: NewRequestData) -> None:
        old = self.states.get(new.request_id)
        st = RequestState(
            new.request_id, list(new.token_ids), new.num_prompt_tokens, new.params,
            list(new.block_ids), new.num_computed_tokens, new.num_prompt_logprobs_done,
            old.generator if old else self._make_generator(new.params.seed),
            grammar=old.grammar if old else None)  # a resumed request's matcher goes on
        if new.params.structured_outputs is not None and self.grammars is not None:
            self.grammars.attach(st)
        self.states[new.request_id] = st

    def _make_generator(self, seed):
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(seed)

    def _prompt_logprobs(self, hidden, rows) -> dict:
        result = {}
        for r in rows:
            st = self.states[r.request_id]
            logits = self.model.compute_logits(hidden[r.first_row:r.first_row + r.count])
            targets = torch.tensor(st.token_ids[r.first_token:r.first_token + r.count],
                                   device=self.device)
            entries = gather_logprobs(torch.log_softmax(logits, dim=-1), targets,
                                      [st.params.prompt_logprobs] * r.count)
            result[r.request_id] = (r.first_token, entries)
        return result

