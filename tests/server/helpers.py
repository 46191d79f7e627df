"""Shared checks for the server tests: the OpenAI error shape, /metrics values, an SSE
response's events, and waiting for the engine to report itself idle with every KV block
free."""
from __future__ import annotations

import json
import re
import time
from typing import Any, Optional

import httpx


def assert_error(r: httpx.Response, status: int, param: Optional[str] = None,
                 contains: Optional[str] = None) -> dict[str, Any]:
    """The OpenAI error body {"error": {"message", "type", "param", "code"}} with `status`."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["code"] == status, err
    if param is not None:
        assert err["param"] == param, err
    if contains is not None:
        assert contains in err["message"], err
    return err


def sse_events(client: httpx.Client, path: str, body: dict) -> list[Any]:
    """The `data:` payloads of an SSE response (JSON decoded; "[DONE]" kept as a string)."""
    events: list[Any] = []
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def wait_until_idle(base_url: str, timeout_s: float, headers: Optional[dict] = None) -> bool:
    """Polls /metrics until nothing runs or waits and the KV cache is empty (the engine's
    stats arrive within a second or so of going idle); False if that never happens."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(base_url + "/metrics", timeout=30, headers=headers).text
        if (metric(text, "tessera:num_requests_running") == 0
                and metric(text, "tessera:num_requests_waiting") == 0
                and metric(text, "tessera:kv_cache_usage_perc") == 0):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
