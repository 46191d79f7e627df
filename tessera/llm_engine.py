"""LLMEngine: the in-process front of the engine (used by `LLM` and, later, the server).

Flow: `add_request(id, prompt, params)` tokenizes and validates (clear ValueError naming
the problem, before anything is queued), fans n > 1 out into n child requests, and
queues them in the EngineCore; `step()` runs one core step and turns its outputs into
RequestOutputs through the OutputProcessor (detokenization, stop strings; children
stopped by a string are aborted in the core so their blocks free at once).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Union

from tessera.config import EngineConfig
from tessera.engine.core import EngineCore
from tessera.engine.output_processor import OutputProcessor
from tessera.engine.request import Request
from tessera.engine.scheduler import QueueFullError
from tessera.models.loader import ModelSource, resolve_model
from tessera.outputs import RequestOutput
from tessera.sampling_params import SamplingParams
from tessera.tokenizer import generation_defaults, generation_eos_ids, load_tokenizer

logger = logging.getLogger(__name__)

PromptType = Union[str, list[int], dict]


@dataclasses.dataclass
class PreparedPrompt:
    text: Optional[str]
    token_ids: list[int]


class LLMEngine:
    def __init__(self, config: EngineConfig):
        from tessera.executor.uniproc import UniprocExecutor  # model code stays out of engine/

        self.config = config
        source = resolve_model(config.model)
        self.tokenizer = load_tokenizer(config.model, source)
        source.arch = dataclasses.replace(source.arch, eos_token_ids=self._eos_ids(source))
        self.arch = source.arch
        self.source = source
        self.max_model_len = self._max_model_len(source)
        self.generation_defaults = generation_defaults(source)
        self.executor = UniprocExecutor(config, source)
        self.core = EngineCore(config, self.executor, self.max_model_len)
        self.output_processor = OutputProcessor(self.tokenizer)
        capacity = self.core.num_blocks * config.cache.block_size
        if capacity < self.max_model_len:
            logger.warning("the KV cache holds %d tokens, less than the context length %d: "
                           "requests that could outgrow it are refused", capacity,
                           self.max_model_len)
        info = self.executor.describe()
        logger.info("model %s: %.2f GiB of weights (%s, %s) loaded in %.1f s; KV cache %d blocks "
                    "x %d tokens = %d tokens", source.path, info["weight_gib"], info["dtype"],
                    info["device"], info["load_seconds"], self.core.num_blocks,
                    config.cache.block_size, self.core.num_blocks * config.cache.block_size)

    def _eos_ids(self, source: ModelSource) -> tuple[int, ...]:
        ids = set(source.arch.eos_token_ids) | set(generation_eos_ids(source))
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def _max_model_len(self, source: ModelSource) -> int:
        limit = source.arch.max_position_embeddings
        asked = self.config.model.max_model_len
        if asked is not None and asked > limit:
            raise ValueError(f"max_model_len {asked} is longer than the model's context "
                             f"({limit} positions).")
        return asked or limit

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.generation_defaults)

    # -- requests ------------------------------------------------------------------------
    def prepare_prompt(self, prompt: PromptType) -> PreparedPrompt:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'.")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass prompt token ids.")
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, list(prompt)
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.arch.vocab_size]
            if bad:
                raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary "
                                 f"(0..{self.arch.vocab_size - 1}).")
        if not ids:
            raise ValueError("the prompt is empty.")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens, but the model's maximum context "
                             f"length is {self.max_model_len} tokens (prompt plus at least one "
                             "new token must fit).")
        return PreparedPrompt(text, ids)

    def add_request(self, request_id: str, prompt: Union[PromptType, PreparedPrompt],
                    params: SamplingParams) -> None:
        prepared = prompt if isinstance(prompt, PreparedPrompt) else self.prepare_prompt(prompt)
        if params.n == 1:
            children = [(request_id, params)]
        else:
            children = [(f"{request_id}-{i}", params.clone(
                n=1, seed=None if params.seed is None else params.seed + i))
                for i in range(params.n)]
        added: list[str] = []
        try:
            for cid, child_params in children:
                self.core.add_request(Request(cid, prepared.token_ids, child_params,
                                              self.arch.eos_token_ids))
                added.append(cid)
        except (QueueFullError, ValueError):
            self.core.abort(added)
            raise
        self.output_processor.add_request(request_id, prepared.text, prepared.token_ids, children)

    def abort_request(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.core.abort(self.output_processor.child_ids(rid))
            self.output_processor.abort(rid)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished()

    def step(self) -> list[RequestOutput]:
        outputs, to_abort = self.output_processor.process(self.core.step())
        if to_abort:
            self.core.abort(to_abort)
        return outputs

    def stats(self) -> dict[str, Any]:
        s = self.core.scheduler
        return {"running": len(s.running), "waiting": len(s.waiting),
                "kv_usage": self.core.kv.usage, "free_blocks": self.core.kv.num_free_blocks,
                "num_blocks": self.core.num_blocks, "preemptions": s.num_preemptions}
