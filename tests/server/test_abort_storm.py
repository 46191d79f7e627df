"""An abort storm (issue 17): 200 streams at once, every other one cut by its client after
two events, three rounds, against the shared live server. Every stream is admitted (200),
the finished ones end with [DONE], and afterwards nothing runs or waits, every KV block is
free and the greedy answer is the one given before the storm.
"""
from __future__ import annotations

import asyncio

import httpx

from tests.server.helpers import wait_until_idle

STREAMS, ROUNDS = 200, 3


def _greedy(base_url: str, model_name: str) -> str:
    r = httpx.post(base_url + "/v1/completions", timeout=120, json={
        "model": model_name, "prompt": "The capital of France is", "max_tokens": 8,
        "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


async def _round(base_url: str, model_name: str) -> list[str]:
    limits = httpx.Limits(max_connections=STREAMS + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        async def one(i: int) -> str:
            body = {"model": model_name, "prompt": f"Story number {i}:", "max_tokens": 16,
                    "temperature": 0.8, "seed": i, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                events = 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events += 1
                    if i % 2 and events == 2:
                        return "cut"  # leaving the block closes the connection mid-stream
                    if line == "data: [DONE]":
                        return "done"
            return "ended without [DONE]"
        return await asyncio.gather(*(one(i) for i in range(STREAMS)))


def test_cut_streams_leave_nothing_behind(server, model_name):
    before = _greedy(server.base_url, model_name)
    for _ in range(ROUNDS):
        outcomes = asyncio.run(_round(server.base_url, model_name))
        assert outcomes.count("cut") == STREAMS // 2
        assert outcomes.count("done") == STREAMS // 2, set(outcomes)
        assert wait_until_idle(server.base_url, 120), "requests or KV blocks left behind"
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    assert _greedy(server.base_url, model_name) == before
