"""Helpers for turning RequestOutputs into client-facing pieces.

Objects: DeltaTracker (per choice: how much text and how many tokens were already sent;
while a request runs, the last `max_stop_len - 1` characters are held back, since a
stop string completed later would cut them), `merge_streams` (several requests' output
streams, e.g. a completions call with a list of prompts, as one stream of
(prompt index, output)), `sse` (one Server-Sent Events frame), `admitted` (streams with
their first outputs awaited, so a refused request is an HTTP status, not an event).
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
    # bounded: a consumer that stops reading stops the pumps, and each stream's mailbox
    # then keeps only its newest output (engine/latest.py), not a copy per step
    queue: asyncio.Queue = asyncio.Queue(maxsize=len(streams))

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
            await queue.put((i, _DONE))
        except Exception as e:  # surfaces in the consumer
            await queue.put((i, e))

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


async def admitted(streams: list[AsyncIterator[RequestOutput]]
                   ) -> list[AsyncIterator[RequestOutput]]:
    """The streams, each with its first output already awaited (all at once, so their
    requests reach the engine together): whatever refuses a request before it produces
    anything (a bad value: 400; a full queue: 503) raises here, before the route sends an
    HTTP status and starts the event stream. If one raises, the others are closed (their
    requests aborted) and the first error is raised."""
    results = await asyncio.gather(*(_first_awaited(s) for s in streams),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                await r.aclose()
        raise errors[0]
    return results


async def _first_awaited(stream: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    it = stream.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        first = _DONE
    return _resumed(first, it)


async def _resumed(first: Any, it: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    """first, then the rest of it; closing this closes it (its request is aborted)."""
    try:
        if first is not _DONE:
            yield first
            async for out in it:
                yield out
    finally:
        close = getattr(it, "aclose", None)
        if close is not None:
            await close()
