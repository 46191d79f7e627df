"""Load: 200 concurrent streaming requests, a quarter cut off by the client mid-stream.

The others must complete exactly as a lone request does, the server must still answer,
and the KV cache must be back to all blocks free (cut requests aborted, nothing leaked).
Loopback only; bounded in count and time.
"""
from __future__ import annotations

import asyncio

import httpx
import openai

from tests.server.helpers import wait_until_idle

PROMPTS = ["Tell me about the sea.", "List three colours.", "What is 2 + 2?", "Name a fruit."]


async def _one(client, model, i: int, cut: bool, expected: dict) -> str:
    prompt = PROMPTS[i % len(PROMPTS)]
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=2000 if cut else 12, stream=True, extra_body={"ignore_eos": True})
    text, chunks = "", 0
    async for chunk in stream:
        chunks += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                assert chunk.choices[0].finish_reason == "length"
        if cut and chunks >= 3:
            await stream.close()  # the client goes away mid-stream
            return "cut"
    assert text == expected[prompt], prompt
    return "done"


def test_200_streams_with_a_quarter_cut_off(server, model_name):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=600,
                                    http_client=httpx.AsyncClient(limits=httpx.Limits(
                                        max_connections=250), timeout=600))
        expected = {}
        for p in PROMPTS:  # what a lone request answers
            r = await client.chat.completions.create(
                model=model_name, messages=[{"role": "user", "content": p}], temperature=0,
                max_tokens=12, extra_body={"ignore_eos": True})
            expected[p] = r.choices[0].message.content
        results = await asyncio.wait_for(asyncio.gather(*[
            _one(client, model_name, i, i % 4 == 0, expected) for i in range(200)]), 900)
        await client.close()
        return results

    results = asyncio.run(main())
    assert results.count("cut") == 50 and results.count("done") == 150
    assert wait_until_idle(server.base_url, 30), \
        "requests still running or KV blocks still held after every client left"
    assert httpx.get(server.base_url + "/health").status_code == 200
    r = httpx.post(server.v1 + "/completions", json={"model": model_name, "prompt": "Hi",
                                                     "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
