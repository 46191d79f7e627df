"""Streams whose client stops reading are aborted (issue 17).

A client that stops reading a stream fills the socket's buffers; then every send of the
response waits. The engine would go on generating for it (its outputs coalesce, so memory
stays bounded, but its KV blocks and batch slot stay taken). `StallGuardedStream` is a
StreamingResponse whose sends may each wait at most `stall_s` (`--stream-stall-timeout`):
past that, the stream ends, its body generator is closed (the request's generator aborts it
in the engine and its KV blocks are freed) and the connection is dropped.
"""
from __future__ import annotations

import asyncio
import logging

from starlette.responses import StreamingResponse

logger = logging.getLogger("tessera.server")


class StalledClient(Exception):
    pass


class StallGuardedStream(StreamingResponse):
    def __init__(self, content, stall_s: float, **kwargs):
        super().__init__(content, **kwargs)
        self.stall_s = stall_s

    async def stream_response(self, send) -> None:
        async def bounded(message) -> None:
            try:
                await asyncio.wait_for(send(message), self.stall_s)
            except asyncio.TimeoutError:
                raise StalledClient(f"the client read nothing for {self.stall_s:g} s") from None
        try:
            await super().stream_response(bounded)
        except StalledClient as e:
            logger.warning("a stream was aborted: %s (--stream-stall-timeout)", e)
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
