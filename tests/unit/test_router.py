"""The data-parallel router and replicas: least-loaded choice, prefix affinity within its
slack, counts kept as requests finish; stats summed; each replica's GPU slice."""
from __future__ import annotations

import pytest

from tessera.config import EngineConfig, ModelConfig, ParallelConfig
from tessera.engine.ipc import Stats
from tessera.engine.replicas import replica_env, sum_stats
from tessera.engine.router import Router

PROMPT = list(range(100, 164))  # four blocks of 16


def test_least_loaded_replica_takes_new_prompts():
    r = Router(3, block_size=16, max_num_seqs=10)
    picks = []
    for i in range(3):  # short prompts: no prefix to follow
        picks.append(r.pick([i]))
        r.sent(picks[-1])
    assert sorted(picks) == [0, 1, 2]
    r.kv_usage = [0.9, 0.0, 0.5]  # equal request counts: KV usage decides
    assert r.pick([7]) == 1


def test_a_shared_prefix_follows_its_replica_until_it_is_overloaded():
    r = Router(2, block_size=16, max_num_seqs=10)
    first = r.pick(PROMPT)
    r.sent(first)
    other = PROMPT[:32] + [9] * 40  # the same first two blocks, then different
    assert r.pick(other) == first  # 0.1 more load is within the slack
    assert r.affinity_hits == 1
    r.sent(first, 3)  # now 0.4 more than the other replica
    assert r.pick(other) == 1 - first
    r.finished(first, 4)
    assert r.in_flight[first] == 0 and r.routed[first] == 4


def test_stats_are_summed_and_kv_usage_is_over_all_blocks():
    a = Stats(running=2, num_blocks=100, free_blocks=50, generation_tokens=7,
              memory={"kv_cache": 10})
    b = Stats(running=1, num_blocks=300, free_blocks=300, generation_tokens=5,
              memory={"kv_cache": 30})
    total = sum_stats([a, b])
    assert (total.running, total.num_blocks, total.generation_tokens) == (3, 400, 12)
    assert total.kv_usage == pytest.approx(50 / 400)
    assert total.memory == {"kv_cache": 40}


def _config(dp: int, tp: int = 1, device: str = "auto", backend: str = "auto"):
    return EngineConfig(model=ModelConfig(device=device), parallel=ParallelConfig(
        data_parallel_size=dp, tensor_parallel_size=tp,
        distributed_executor_backend=backend))


def test_each_replica_gets_its_own_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5")
    assert replica_env(_config(3, tp=2), 1) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert replica_env(_config(1, tp=2), 0) == {}  # one replica: as before
    assert replica_env(_config(3, tp=2, device="cpu"), 1) == {}
    with pytest.raises(ValueError, match="needs 8 GPUs; this host has 6"):
        replica_env(_config(4, tp=2), 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert replica_env(_config(2), 1) == {}  # no GPUs: CPU replicas
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("tessera.engine.replicas.RAY_LOCAL_CLUSTER", "/nonexistent")
    with pytest.raises(ValueError, match="needs a running Ray cluster"):
        replica_env(_config(2, backend="ray"), 0)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert replica_env(_config(3, tp=2, backend="ray"), 1) == {}  # Ray places workers
