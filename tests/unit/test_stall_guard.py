"""A stream whose client stops reading is ended and its body generator closed (the
request aborted) after --stream-stall-timeout; a client that reads gets every chunk."""
from __future__ import annotations

import asyncio

from tessera.server.stall_guard import StallGuardedStream


def _chunks(closed: asyncio.Event, count: int = 10_000):
    async def gen():
        try:
            for i in range(count):
                yield f"data: {i}\n\n"
        finally:
            closed.set()  # what aborts the request in the engine
    return gen()


def test_a_client_that_stops_reading_ends_the_stream_and_closes_its_generator():
    async def run():
        closed, sent = asyncio.Event(), []

        async def send(message):
            sent.append(message)
            if len(sent) > 3:  # the socket's buffers are full: this send never completes
                await asyncio.Event().wait()
        response = StallGuardedStream(_chunks(closed), 0.2, media_type="text/event-stream")
        await asyncio.wait_for(response.stream_response(send), 5)
        assert closed.is_set() and len(sent) == 4
        assert not any(m.get("more_body") is False for m in sent)  # not ended as complete
    asyncio.run(run())


def test_a_reading_client_gets_every_chunk():
    async def run():
        closed, sent = asyncio.Event(), []

        async def send(message):
            await asyncio.sleep(0)
            sent.append(message)
        response = StallGuardedStream(_chunks(closed, 50), 0.2, media_type="text/event-stream")
        await response.stream_response(send)
        bodies = [m for m in sent if m["type"] == "http.response.body"]
        assert len(bodies) == 51 and bodies[-1]["more_body"] is False and closed.is_set()
    asyncio.run(run())
