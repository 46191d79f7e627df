"""Helpers for turning RequestOutputs into client-facing pieces.

Objects: DeltaTracker (per choice: how much text and how many tokens were already sent;
while a request runs, the last `max_stop_len - 1` characters are held back, since a
stop string completed later would cut them), `merge_streams` (several requests' output
streams, e.g. a completions call with a list of prompts, as one stream of
(prompt index, output)), `sse` (one Server-Sent Events frame).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from tessera.outputs import CompletionOutput, RequestOutput

_DONE = object()


def sse(payload: Any) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class DeltaTracker:
    def __init__(self, stop: list[str]):
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.sent_text: dict[int, int] = {}
        self.sent_tokens: dict[int, int] = {}
        self.done: set[int] = set()  # choices whose finish was already sent

    def skip(self, c: CompletionOutput) -> bool:
        """A parent's output repeats finished choices; each finish is sent once."""
        if c.index in self.done:
            return True
        if c.finished:
            self.done.add(c.index)
        return False

    def delta(self, c: CompletionOutput) -> tuple[str, int, int]:
        """(new text, first new token index, end token index) for choice c."""
        sent = self.sent_text.get(c.index, 0)
        ready = len(c.text) if c.finished else max(sent, len(c.text) - self.holdback)
        text = c.text[sent:ready]
        self.sent_text[c.index] = ready
        first = self.sent_tokens.get(c.index, 0)
        self.sent_tokens[c.index] = len(c.token_ids)
        return text, first, len(c.token_ids)


async def merge_streams(streams: list[AsyncIterator[RequestOutput]]
                        ) -> AsyncIterator[tuple[int, RequestOutput]]:
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
            queue.put_nowait((i, _DONE))
        except Exception as e:  # surfaces in the consumer
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
