"""engine/latest.py: a request's mailbox keeps only the newest output (outputs are
cumulative), so a consumer that stops reading holds one, not one per step; an error
comes after the output still pending, and stays."""
from __future__ import annotations

import asyncio

import pytest

from tessera.engine.latest import Latest


def test_a_late_reader_gets_the_newest_output_only():
    async def run():
        box = Latest()
        for step in range(1000):
            box.put({"tokens": list(range(step + 1))})
        first = await box.get()
        box.put({"tokens": [0]})
        return first, await box.get()
    first, second = asyncio.run(run())
    assert len(first["tokens"]) == 1000 and second == {"tokens": [0]}


def test_an_error_follows_the_pending_output_and_stays():
    async def run():
        box = Latest()
        box.put("last output")
        box.fail(RuntimeError("engine gone"))
        box.fail(ValueError("a second error is not kept"))
        got = await box.get()
        with pytest.raises(RuntimeError, match="engine gone"):
            await box.get()
        with pytest.raises(RuntimeError, match="engine gone"):
            await box.get()
        return got
    assert asyncio.run(run()) == "last output"


def test_get_waits_for_a_put():
    async def run():
        box = Latest()
        waiter = asyncio.create_task(box.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        box.put(7)
        return await asyncio.wait_for(waiter, 1)
    assert asyncio.run(run()) == 7
