"""RayExecutor: a Ray actor per rank (TP x PP of them), placed by a placement group across
the nodes of a Ray cluster (`--distributed-executor-backend ray`).

Flow: join the cluster (`ray_address`, else RAY_ADDRESS, else the one `ray start` began on
this host, else a new local one) -> a placement group of one bundle per rank ({"GPU": 1}
when the cluster has GPUs and the model is not on the CPU, else {"CPU": n}) by
`ray_placement_strategy`, refused with the cluster's resources when it cannot be placed ->
a RayWorker actor in each bundle -> rank 0's actor names the address the process group
meets at (NCCL on GPUs, gloo on CPUs) -> each actor's `serve` connects to this executor's
TCP sockets, bound on this node's IP and CURVE-encrypted (each actor is handed the
executor's public key; a peer without it can neither connect, read a step nor send a
result), and the protocol of executor/messaging.py runs as for worker processes: no
pickled tensors, only msgpack frames. The actors' `serve` calls are
watched: one that ends (its node or actor died) is a WorkerFailure at the next wait, so a
lost node fails the engine's requests within the collective timeout instead of hanging.
Ray's own transport (which carries that key and the config) is not authenticated unless
the cluster enables Ray's TLS: the cluster's network must be trusted for Ray itself.
"""
from __future__ import annotations

import logging
import time

from tessera.config import EngineConfig
from tessera.executor.messaging import STARTUP_TIMEOUT_S, MessagingExecutor, WorkerFailure
from tessera.logs import level_name

logger = logging.getLogger(__name__)
PLACEMENT_TIMEOUT_S = 120.0  # a feasible group waits this long for busy resources
ALIVE_CHECK_S = 0.25  # how often the actors' liveness is asked (ray.wait), at most


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--distributed-executor-backend ray needs Ray: "
                           "pip install 'tessera[ray]'") from None
    return ray


def join_cluster(address):
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    return ray


def fits(nodes: list[dict], bundle: dict, count: int, strategy: str) -> bool:
    """Whether nodes (each its total resources) could ever hold count bundles this way."""
    per_node = [min(int(n.get(k, 0) // v) for k, v in bundle.items()) for n in nodes]
    if strategy == "STRICT_PACK":
        return max(per_node, default=0) >= count
    if strategy == "STRICT_SPREAD":
        return sum(1 for k in per_node if k >= 1) >= count
    return sum(per_node) >= count


def _describe(nodes: list[dict]) -> str:
    return "; ".join(sorted(", ".join(f"{k} {v:g}" for k, v in sorted(n.items())
                                      if k in ("CPU", "GPU")) or "nothing" for n in nodes))


class RayExecutor(MessagingExecutor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        ray = join_cluster(config.parallel.ray_address)
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from tessera.executor.ray_worker import RayWorker
        self._ray, self._remove_pg = ray, remove_placement_group
        self._actors, self._loops = [], []
        gpu = (config.model.device != "cpu"
               and ray.cluster_resources().get("GPU", 0) > 0)
        cpus = max(1, config.model.cpu_threads or 1)
        bundle = {"GPU": 1, "CPU": 1} if gpu else {"CPU": cpus}
        strategy = config.parallel.ray_placement_strategy
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        why = f"{self.world} bundle(s) of {bundle} ({strategy})"
        if not fits(nodes, bundle, self.world, strategy):
            raise RuntimeError(f"the Ray cluster cannot place {why}: its nodes hold "
                               f"{_describe(nodes)}")
        self._pg = placement_group([dict(bundle) for _ in range(self.world)], strategy=strategy)
        ready, _ = ray.wait([self._pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            self._remove_pg(self._pg)
            raise RuntimeError(f"the Ray cluster did not place {why} within "
                               f"{PLACEMENT_TIMEOUT_S:.0f} s: its free resources are "
                               f"{ray.available_resources()}")
        try:
            self._start(config, bundle, strategy, RayWorker, PlacementGroupSchedulingStrategy)
        except BaseException:
            self.shutdown()
            raise
        self._greet()

    def _start(self, config, bundle, strategy, worker_cls, in_bundle) -> None:
        ray = self._ray
        actor_cls = ray.remote(worker_cls)
        for rank in range(self.world):
            self._actors.append(actor_cls.options(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), max_restarts=0,
                scheduling_strategy=in_bundle(
                    placement_group=self._pg, placement_group_bundle_index=rank)).remote())
        ip0, port = ray.get(self._actors[0].address.remote(), timeout=STARTUP_TIMEOUT_S)
        here = ray.util.get_node_ip_address()
        out_addr, inboxes = self._bind(f"tcp://{here}:*", lambda rank: f"tcp://{here}:*",
                                       encrypt=True)
        config_json = config.to_json()
        self._loops = [actor.serve.remote(config_json, rank, f"tcp://{ip0}:{port}",
                                          inboxes[rank], out_addr, level_name(),
                                          self.server_key)
                       for rank, actor in enumerate(self._actors)]
        logger.info("Ray executor: %d actor(s), bundles %s (%s); rank 0 on %s",
                    self.world, bundle, strategy, ip0)

    def _check_alive(self) -> str:
        now = time.monotonic()
        if now - self._last_check < ALIVE_CHECK_S:
            return ""
        self._last_check = now
        done, _ = self._ray.wait(self._loops, num_returns=len(self._loops), timeout=0)
        for ref in done:
            rank = self._loops.index(ref)
            try:
                code = self._ray.get(ref)
            except Exception as e:  # RayActorError: its node or process is gone
                return f"worker {rank} (a Ray actor) died: {str(e).splitlines()[0]}"
            return f"worker {rank} (a Ray actor) stopped with code {code}"
        return ""

    def _stop_workers(self) -> None:
        ray = self._ray
        if self._loops:
            ray.wait(self._loops, num_returns=len(self._loops), timeout=5)
        for actor in self._actors:
            ray.kill(actor)
        self._remove_pg(self._pg)


__all__ = ["RayExecutor", "WorkerFailure", "join_cluster"]
