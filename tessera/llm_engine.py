"""LLMEngine: a Frontend and an EngineCore in one process (offline use and tests).

Flow: `add_request(id, prompt, params)` validates and tokenizes through the Frontend
(clear ValueError before anything is queued), fans n > 1 out into child requests and
queues them in the EngineCore; `step()` runs one core step and turns its outputs into
RequestOutputs; children stopped by a stop string are aborted in the core so their
blocks free at once.
"""
from __future__ import annotations

import logging
from typing import Any, Union

from tessera.config import EngineConfig
from tessera.engine.core import EngineCore
from tessera.engine.request import Request
from tessera.engine.scheduler import QueueFullError
from tessera.frontend import Frontend, PreparedPrompt, PromptType
from tessera.outputs import RequestOutput
from tessera.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def build_core(config: EngineConfig, frontend_source, max_model_len: int) -> EngineCore:
    """Load the model on this process's device and wrap it in an EngineCore."""
    tp, pp = config.parallel.tensor_parallel_size, config.parallel.pipeline_parallel_size
    a = frontend_source.arch
    from tessera.distributed.topology import check_layout
    check_layout(a.num_heads, a.num_kv_heads, a.intermediate_size, a.num_layers, tp,
                 config.model.torch_device.type == "cuda", pp)
    if tp * pp > 1:
        from tessera.executor.multiproc import MultiprocExecutor
        executor = MultiprocExecutor(config, frontend_source)
    else:
        from tessera.executor.uniproc import UniprocExecutor  # model code stays out of engine/
        executor = UniprocExecutor(config, frontend_source)
    core = EngineCore(config, executor, max_model_len)
    capacity = core.num_blocks * config.cache.block_size
    info = executor.describe()
    logger.info("model %s: %.2f GiB of weights (%s, %s) loaded in %.1f s", frontend_source.path,
                info["weight_gib"], info["dtype"], info["device"], info["load_seconds"])
    logger.info("KV cache (%s): %d blocks x %d tokens = %d tokens; maximum concurrency at %d "
                "tokens per request: %.2fx", info.get("kv_cache_dtype", info["dtype"]),
                core.num_blocks, config.cache.block_size, capacity, max_model_len,
                capacity / max_model_len)
    if capacity < max_model_len:
        logger.warning("the KV cache holds %d tokens, less than the context length %d: requests "
                       "that could outgrow it are refused", capacity, max_model_len)
    return core


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.frontend = Frontend(config)
        self.tokenizer = self.frontend.tokenizer
        self.arch = self.frontend.arch
        self.max_model_len = self.frontend.max_model_len
        self.generation_defaults = self.frontend.generation_defaults
        self.core = build_core(config, self.frontend.source, self.max_model_len)
        self.executor = self.core.executor
        self.output_processor = self.frontend.output_processor

    def default_sampling_params(self) -> SamplingParams:
        return self.frontend.default_sampling_params()

    def prepare_prompt(self, prompt: PromptType) -> PreparedPrompt:
        return self.frontend.prepare_prompt(prompt)

    def add_request(self, request_id: str, prompt: Union[PromptType, PreparedPrompt],
                    params: SamplingParams, stream: bool = True) -> None:
        """stream=False: `step()` returns this request's output once, when it finishes."""
        prepared = self.frontend.prepare_prompt(prompt)
        children = self.frontend.children(request_id, params)
        added: list[str] = []
        try:
            for cid, child_params in children:
                self.core.add_request(Request(cid, prepared.token_ids, child_params,
                                              self.arch.eos_token_ids))
                added.append(cid)
        except (QueueFullError, ValueError):
            self.core.abort(added)
            raise
        self.output_processor.add_request(request_id, prepared.text, prepared.token_ids, children,
                                          stream)

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
        return self.core.stats()
