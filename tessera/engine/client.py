"""Engine clients: the front end's one handle on an engine core, wherever the core runs.

Objects: EngineClient (the interface, and the logic every client shares), InprocClient
(the core in this process: offline `LLM`, `tessera bench`, tests) and, in
engine/mp_client.py, MPClient (the core in its own process, over ZMQ: the server).
Shared flow: the config's model metadata is resolved once and the tokenizer loaded
(frontend/model_info.py); a request is validated and tokenized (`input`:
frontend/input.py), fanned out into n child requests (seeds seed, seed+1, ...), sent to
the core (`_send_children`), and registered with the output processor (`output`:
frontend/output.py); the core's outputs come back through `_process`, which detokenizes,
applies stop strings and aborts children that a stop string finished (their blocks free at
once); `abort(request_id)` aborts every child of a request. Subclasses say how children
reach the core and how aborts do (`_send_children`, `_abort_children`).
"""
from __future__ import annotations

import abc
from typing import Any, Optional, Union

from tessera.config import EngineConfig
from tessera.engine.core import EngineCore
from tessera.engine.protocol import EngineCoreOutput
from tessera.engine.request import Request
from tessera.engine.scheduler import QueueFullError
from tessera.frontend.input import InputProcessor, PreparedPrompt, PromptType
from tessera.frontend.model_info import resolve_config
from tessera.frontend.output import OutputProcessor
from tessera.outputs import RequestOutput
from tessera.sampling_params import SamplingParams

Children = list[tuple[str, SamplingParams]]


class EngineClient(abc.ABC):
    def __init__(self, config: EngineConfig):
        self.config, self.tokenizer = resolve_config(config)
        self.input = InputProcessor(self.config, self.tokenizer)
        self.output = OutputProcessor(self.tokenizer)
        self.arch = self.input.arch
        self.max_model_len = self.input.max_model_len
        self.generation_defaults = self.input.generation_defaults

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        return self.input.default_sampling_params(**overrides)

    def prepare_prompt(self, prompt: PromptType) -> PreparedPrompt:
        return self.input.prepare_prompt(prompt)

    def check_fan_out(self, sequences: int) -> None:
        """ValueError when one API request asks for more sequences (prompts x n) than the
        waiting queue holds (--max-waiting): checked before any of them is sent, so one
        request can neither fill the queue nor be half admitted."""
        limit = self.config.scheduler.max_waiting
        if sequences > limit:
            raise ValueError(f"this request asks for {sequences} sequences (prompts x n); "
                             f"the server takes at most {limit} in one request "
                             f"(--max-waiting).")

    def _start(self, request_id: str, prompt: Union[PromptType, PreparedPrompt],
               params: SamplingParams, stream: bool = True) -> Children:
        """Validates, fans out, sends the children, registers the request's outputs."""
        prepared = self.input.prepare_prompt(prompt)
        children = self.input.children(request_id, params)
        self._send_children(request_id, prepared, children)
        self.output.add_request(request_id, prepared.text, prepared.token_ids, children, stream)
        return children

    def _process(self, outputs: list[EngineCoreOutput]) -> list[RequestOutput]:
        results, to_abort = self.output.process(outputs)
        if to_abort:
            self._abort_children(to_abort)
        return results

    def abort(self, request_id: str) -> None:
        children = self.output.child_ids(request_id)
        self.output.abort(request_id)
        if children:
            self._abort_children(children)

    @abc.abstractmethod
    def _send_children(self, request_id: str, prompt: PreparedPrompt,
                       children: Children) -> None:
        """Hands request_id's children to the core (in process: all or none)."""

    @abc.abstractmethod
    def _abort_children(self, child_ids: list[str]) -> None: ...


class InprocClient(EngineClient):
    """Steps the engine core in this process: `add_request`, then `step()` until
    `has_unfinished_requests()` is False. stream=False: a request's output comes once,
    when it finishes."""

    def __init__(self, config: EngineConfig, core: Optional[EngineCore] = None):
        if config.parallel.data_parallel_size > 1:
            raise ValueError("data_parallel_size > 1 is served by `tessera serve` (an engine "
                             "process per replica); an engine in this process is one replica.")
        super().__init__(config)
        self.core = core or EngineCore(self.config)
        self.executor = self.core.executor

    def add_request(self, request_id: str, prompt: Union[PromptType, PreparedPrompt],
                    params: SamplingParams, stream: bool = True) -> None:
        self._start(request_id, prompt, params, stream)

    def _send_children(self, request_id: str, prompt: PreparedPrompt,
                       children: Children) -> None:
        added: list[str] = []
        try:
            for cid, child_params in children:
                self.core.add_request(Request(cid, prompt.token_ids, child_params,
                                              self.arch.eos_token_ids))
                added.append(cid)
        except (QueueFullError, ValueError):
            self.core.abort(added)
            raise

    def _abort_children(self, child_ids: list[str]) -> None:
        self.core.abort(child_ids)

    def abort_request(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.abort(rid)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished()

    def step(self) -> list[RequestOutput]:
        return self._process(self.core.step())

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def shutdown(self) -> None:
        self.core.shutdown()
