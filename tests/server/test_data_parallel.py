"""Two data-parallel replicas of the default model behind one `tessera serve` endpoint
(`--data-parallel-size 2`): greedy answers equal the one-replica server's, concurrent
requests spread over both replicas, a repeated prompt sticks to one (prefix affinity),
/metrics has each replica and the totals, `--price-per-hour` puts each request's cost in
its usage and the totals on /metrics, and a replica that dies takes the server down
with an error instead of leaving requests hanging."""
from __future__ import annotations

import concurrent.futures
import re
import time

import openai
import psutil
import pytest

from tests.helpers.launch import start_server


@pytest.fixture(scope="module")
def dp_server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("dp")), "--data-parallel-size", "2",
                       "--cpu-threads", "1", "--num-blocks", "200",
                       "--price-per-hour", "3.6")
    yield srv
    srv.stop()


def _metric(text: str, name: str) -> dict[str, float]:
    """label set -> value for one metric family in a /metrics text."""
    out = {}
    for labels, value in re.findall(rf"^{re.escape(name)}\{{(.*?)\}} (\S+)$", text, re.M):
        out[labels] = float(value)
    return out


def _routed(srv) -> list[float]:
    text = openai.OpenAI(base_url=srv.v1, api_key="x")._client.get(
        srv.base_url + "/metrics").text
    counts = _metric(text, "tessera:replica_routed_requests_total")
    return [v for _, v in sorted(counts.items())]


def test_replicas_answer_like_one_and_share_the_load(dp_server, sdk, model_name):
    dp = openai.OpenAI(base_url=dp_server.v1, api_key="x", max_retries=0, timeout=120)
    prompts = [f"Count from {i} to {i + 5}:" for i in range(8)]

    def ask(client, prompt):
        r = client.completions.create(model=model_name, prompt=prompt, max_tokens=8,
                                      temperature=0)
        return r.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: ask(dp, p), prompts))
    want = [ask(sdk, p) for p in prompts]
    assert got == want
    routed = _routed(dp_server)
    assert len(routed) == 2 and sum(routed) == 8 and min(routed) >= 2


def test_a_repeated_prompt_stays_on_one_replica(dp_server, model_name):
    dp = openai.OpenAI(base_url=dp_server.v1, api_key="x", max_retries=0, timeout=120)
    before = _routed(dp_server)
    prompt = "A shared system prompt that is long enough to fill a few KV blocks. " * 4
    for _ in range(4):
        dp.completions.create(model=model_name, prompt=prompt, max_tokens=2)
    grew = [a - b for a, b in zip(_routed(dp_server), before)]
    assert sorted(grew) == [0, 4]


def test_metrics_have_each_replica_and_the_total(dp_server):
    text = openai.OpenAI(base_url=dp_server.v1, api_key="x")._client.get(
        dp_server.base_url + "/metrics").text
    per = _metric(text, "tessera:replica_generation_tokens_total")
    total = _metric(text, "tessera:generation_tokens_total")
    assert len(per) == 2 and all(v > 0 for v in per.values())
    assert sum(per.values()) == sum(total.values())
    blocks = _metric(text, "tessera:kv_cache_blocks")
    assert sum(blocks.values()) == 400  # both replicas' 200 blocks


def test_usage_carries_the_requests_cost(dp_server, model_name):
    dp = openai.OpenAI(base_url=dp_server.v1, api_key="x", max_retries=0, timeout=120)
    short = dp.completions.create(model=model_name, prompt="Hi", max_tokens=1)
    long = dp.chat.completions.create(model=model_name, max_tokens=24, messages=[
        {"role": "user", "content": "Write a long story about a lighthouse."}])
    costs = [short.usage.model_extra["cost_usd"], long.usage.model_extra["cost_usd"]]
    assert 0 < costs[0] < costs[1] < 3.6 * 2 / 3600 * 120  # under two minutes of 2 replicas
    chunks = list(dp.chat.completions.create(
        model=model_name, max_tokens=4, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}]))
    assert chunks[-1].usage.model_extra["cost_usd"] > 0
    text = openai.OpenAI(base_url=dp_server.v1, api_key="x")._client.get(
        dp_server.base_url + "/metrics").text
    spent = {re.search(r'kind="(\w+)"', k).group(1): v
             for k, v in _metric(text, "tessera:cost_usd_total").items()}
    assert set(spent) == {"requests", "idle"}
    assert spent["requests"] >= sum(costs) and spent["idle"] > 0


def test_a_dead_replica_stops_the_server(tmp_path):
    srv = start_server(str(tmp_path), "--data-parallel-size", "2", "--cpu-threads", "1",
                       "--num-blocks", "64")
    try:
        cores = [c for c in psutil.Process(srv.proc.pid).children(recursive=True)
                 if "tessera.engine.core_proc" in " ".join(c.cmdline())]
        assert len(cores) == 2
        cores[1].kill()
        assert srv.proc.wait(30) != 0
        assert "engine process 1 exited" in srv.log()
    finally:
        srv.stop()
    deadline = time.monotonic() + 10
    while cores[0].is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cores[0].is_running() or cores[0].status() == psutil.STATUS_ZOMBIE
