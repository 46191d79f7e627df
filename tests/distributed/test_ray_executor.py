"""The Ray executor on a local Ray cluster of three nodes (ray.cluster_utils.Cluster: a head
with no CPUs for actors and two one-CPU nodes, so STRICT_SPREAD puts each rank on its own
node): TP=2 and PP=2 across the two nodes give the tokens and logprobs of one process; a
node removed mid-run fails the engine within the collective timeout and leaves nothing
behind; a layout the cluster cannot hold is refused with its resources."""
from __future__ import annotations

import os
import time

import openai
import pytest

from tessera import LLM, SamplingParams
from tessera.executor.messaging import WorkerFailure
from tests.helpers.outputs import assert_same_greedy
from tests.helpers.launch import start_server

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

PROMPTS = [[5, 17, 99, 3], list(range(20, 60)), [300, 7, 7, 150, 42]]
PARAMS = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=0)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                      "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_llama):
    llm = LLM(tiny_llama[0], skip_tokenizer_init=True, num_blocks=64,
              max_num_batched_tokens=16)
    return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)


def _ray_llm(folder, **kwargs):
    return LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16,
               distributed_executor_backend="ray", ray_placement_strategy="STRICT_SPREAD",
               **kwargs)


def _free_cpus_reach(n: int, within_s: float = 30) -> bool:
    """Ray returns resources asynchronously: waits until n CPUs are free again."""
    deadline = time.monotonic() + within_s
    while ray.available_resources().get("CPU", 0) != n and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0) == n


def _actor_nodes(executor) -> set[str]:
    pg_table = ray.util.placement_group_table(executor._pg)
    return set(pg_table["bundles_to_node_id"].values())


@pytest.mark.parametrize("layout", [{"tensor_parallel_size": 2},
                                    {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"])
def test_two_nodes_equal_one_process(cluster, tiny_llama, reference, layout):
    llm = _ray_llm(tiny_llama[0], **layout)
    try:
        assert len(_actor_nodes(llm.engine.executor)) == 2  # a rank on each node
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)
        assert_same_greedy(reference, outs)
        assert llm.engine.stats()["free_blocks"] == 64
    finally:
        llm.engine.executor.shutdown()
    assert _free_cpus_reach(2)  # actors and bundles returned


def test_too_big_a_layout_is_refused_with_the_clusters_resources(cluster, tiny_llama):
    with pytest.raises(RuntimeError, match=r"cannot place 4 bundle\(s\) of \{'CPU': 1\} \(STRICT_SPREAD\): its nodes hold "
                       r"CPU 1; CPU 1; nothing"):
        _ray_llm(tiny_llama[0], tensor_parallel_size=4)
    assert _free_cpus_reach(2)


def test_replicas_of_a_server_run_on_the_clusters_nodes(cluster, tmp_path):
    """`tessera serve --data-parallel-size 2` with the Ray backend: each replica's engine
    joins the cluster (RAY_ADDRESS) and its worker lands on a node of its own."""
    c, _ = cluster
    srv = start_server(str(tmp_path), "--data-parallel-size", "2", "--num-blocks", "64",
                       "--distributed-executor-backend", "ray",
                       "--ray-placement-strategy", "STRICT_SPREAD",
                       env={**os.environ, "RAY_ADDRESS": c.address})
    try:
        groups = [g for g in ray.util.placement_group_table().values()
                  if g["state"] == "CREATED"]
        assert len(groups) == 2
        nodes = {n for g in groups for n in g["bundles_to_node_id"].values()}
        assert len(nodes) == 2  # one replica's rank on each node
        client = openai.OpenAI(base_url=srv.v1, api_key="x", max_retries=0, timeout=120)
        for prompt in ("Hello", "The sky is", "One, two,"):
            r = client.completions.create(model="SmolLM2-135M-Instruct", prompt=prompt,
                                          max_tokens=4)
            assert r.usage.completion_tokens == 4
    finally:
        srv.stop()
    assert _free_cpus_reach(2)


def test_a_lost_node_fails_the_engine_within_the_timeout(cluster, tiny_llama):
    """Runs last in this module: it takes a node away."""
    c, nodes = cluster
    llm = _ray_llm(tiny_llama[0], tensor_parallel_size=2, collective_timeout_s=20)
    llm.engine.add_request("r", {"prompt_token_ids": [1, 2, 3]},
                           SamplingParams(max_tokens=5000, ignore_eos=True))
    llm.engine.step()
    c.remove_node(nodes[1])
    start = time.monotonic()
    with pytest.raises(WorkerFailure, match="worker"):
        while llm.engine.has_unfinished_requests():
            llm.engine.step()
    assert time.monotonic() - start < 30
    assert _free_cpus_reach(1)  # the survivor's actor is killed, its bundle removed
