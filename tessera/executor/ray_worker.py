"""RayWorker: the Ray actor that runs one rank's worker (executor/ray_executor.py starts
one per placement-group bundle).

Flow: `address()` tells the executor this node's IP and a free port there (rank 0's is
where the process group meets); `serve(...)` then runs worker_proc.serve_worker on the
executor's ZMQ sockets (CURVE-encrypted: `server_key`, the executor's public key), the
same messages as a worker process (msgpack, never pickle), until Shutdown. The actor's
GPU, if Ray gave it one, is its device 0. The actor dies with its owner, the engine
process, so it needs no lifeline of its own.
"""
from __future__ import annotations

import logging

from tessera.config import EngineConfig
from tessera.executor.multiproc import free_port
from tessera.executor.worker_proc import serve_worker
from tessera.logs import setup_logging


class RayWorker:
    def address(self) -> tuple[str, int]:
        import ray
        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def serve(self, config_json: str, rank: int, dist_init: str, input_addr: str,
              output_addr: str, log_level: str, server_key: str) -> int:
        import ray
        setup_logging(log_level, f"rank{rank}")
        logging.getLogger("tessera.worker").info(
            "Ray actor for rank %d on node %s", rank, ray.util.get_node_ip_address())
        local_gpu = 0 if ray.get_gpu_ids() else None
        return serve_worker(EngineConfig.from_json(config_json), rank, dist_init, input_addr,
                            output_addr, wanted=lambda: True, local_gpu=local_gpu,
                            server_key=server_key)
