"""Latest: one request's mailbox between the engine reader and its consumer, holding only
the newest output.

A RequestOutput is cumulative (every choice's token ids, text and finish so far), so a
consumer that reads late loses nothing by skipping to the newest one: streaming deltas
are computed from what was last sent (server/streaming.py DeltaTracker). A client that
stops reading therefore holds one pending output, not one full copy per step (which grew
as the square of the tokens: 630 MiB per choice at 8,000 tokens). Objects: Latest, with
`put(output)`, `fail(error)` (an error is raised once the pending output is taken) and
`await get()`.
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional


class Latest:
    def __init__(self):
        self._item: Optional[Any] = None
        self._error: Optional[BaseException] = None
        self._ready = asyncio.Event()

    def put(self, item: Any) -> None:
        """Replaces any output not yet taken."""
        self._item = item
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._ready.set()

    async def get(self) -> Any:
        await self._ready.wait()
        if self._item is not None:
            item, self._item = self._item, None
            if self._error is None:
                self._ready.clear()
            return item
        raise self._error
