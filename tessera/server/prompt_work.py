"""Prompt work off the event loop: tokenizing prompts and rendering chat templates.

Objects: PromptWorkers. `await workers.run(fn, *args)` runs fn in a small pool of threads
and gives its result (or raises its exception), so a megabyte prompt or a slow template
holds one pool thread, not the event loop that every other client and /health share. A
call not done within `timeout_s` (queueing for a thread included) is refused with a 400
naming what took too long; its thread finishes in the background (Python threads cannot
be stopped), and the pool's size bounds how many such threads there can be. Request-
supplied chat templates are refused unless the server trusts them
(`--trust-request-chat-template`): the model's own template is the one that runs.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable

from tessera.server.errors import ApiError


class PromptWorkers:
    def __init__(self, max_workers: int = 4, timeout_s: float = 10.0):
        self.timeout_s = timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers,
                                                          thread_name_prefix="prompt")

    async def run(self, fn: Callable[..., Any], *args: Any, what: str = "prompt",
                  **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(400, f"preparing the {what} took longer than {self.timeout_s:g} s "
                           "(--prompt-timeout); shorten it.", what) from None

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
