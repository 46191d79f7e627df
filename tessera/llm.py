"""LLM: offline generation in vLLM's familiar shape.

    from tessera import LLM, SamplingParams
    llm = LLM()                                    # the default model, SmolLM2-135M-Instruct
    outs = llm.generate(["Hello"], SamplingParams(max_tokens=32))
    outs = llm.chat([{"role": "user", "content": "Hi"}])

Every prompt is validated before any is queued; requests then run together (continuous
batching) and outputs come back in prompt order. `llm.engine` is the InprocClient
(engine/client.py) that steps the engine core in this process.
"""
from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence, Union

from tessera.config import EngineConfig
from tessera.engine.client import InprocClient
from tessera.engine.scheduler import QueueFullError
from tessera.frontend.input import PromptType
from tessera.gc_tuning import freeze_after_startup, unfreeze
from tessera.outputs import RequestOutput
from tessera.sampling_params import SamplingParams

Messages = list[dict[str, Any]]


class LLM:
    def __init__(self, model: Optional[str] = None, *, freeze_gc: bool = False, **kwargs: Any):
        """kwargs: engine options (config.py). freeze_gc: once built, freeze every object
        of this process out of Python's garbage collector, whose full collections otherwise
        pause large batches ~100 ms at a time (gc_tuning.py); `release_gc()` (or deleting
        this LLM) gives them back. Reference cycles that die meanwhile wait until then."""
        self._frozen = False
        self.engine = InprocClient(EngineConfig.from_kwargs(model=model, **kwargs))
        self._ids = itertools.count()
        if freeze_gc:
            freeze_after_startup()
            self._frozen = True

    def release_gc(self) -> None:
        """Undoes freeze_gc (the last release gives the frozen objects back)."""
        if getattr(self, "_frozen", False):
            self._frozen = False
            unfreeze()

    def __del__(self):
        try:
            self.release_gc()
        except Exception:  # interpreter shutdown: nothing left to give back
            pass

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Union[PromptType, Sequence[PromptType]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = self._params_list(sampling_params, len(prompts))
        prepared = [self.engine.prepare_prompt(p) for p in prompts]
        pending = [(str(next(self._ids)), pp, sp) for pp, sp in zip(prepared, params)]
        return self._run(pending, use_tqdm)

    def chat(self, messages: Union[Messages, Sequence[Messages]],
             sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
             add_generation_prompt: bool = True, chat_template: Optional[str] = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [{"prompt_token_ids": self.apply_chat_template(conv, add_generation_prompt,
                                                                  chat_template)}
                   for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True,
                            chat_template: Optional[str] = None) -> list[int]:
        return self.engine.input.apply_chat_template(messages, add_generation_prompt,
                                                     chat_template)

    def _params_list(self, sampling_params, count: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.engine.default_sampling_params()] * count
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        if len(sampling_params) != count:
            raise ValueError(f"{len(sampling_params)} sampling params for {count} prompts.")
        return list(sampling_params)

    def _run(self, pending: list, use_tqdm: bool) -> list[RequestOutput]:
        order = {rid: i for i, (rid, _, _) in enumerate(pending)}
        results: list[Optional[RequestOutput]] = [None] * len(pending)
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(pending), desc="Generating")
        queue = list(reversed(pending))
        try:
            while queue or self.engine.has_unfinished_requests():
                while queue:
                    rid, prompt, params = queue[-1]
                    try:
                        self.engine.add_request(rid, prompt, params, stream=False)
                    except QueueFullError:
                        break
                    queue.pop()
                for out in self.engine.step():
                    if out.finished and out.request_id in order:
                        results[order[out.request_id]] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            self.engine.abort_request([rid for rid, _, _ in pending])
            raise
        finally:
            if bar is not None:
                bar.close()
        return results
