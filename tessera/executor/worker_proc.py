"""One worker process of the multi-process executor: `python -m tessera.executor.worker_proc`.

Flow: read the config (model metadata included) from the command line -> Worker (joins the
process groups, loads this rank's shard: worker/worker.py) -> send Hello (KV-block estimate,
WorkerInfo) -> `serve` messages: InitCache, Step (run this stage's layers on the shared
SchedulerOutput; the output rank returns the sampled tokens), Shutdown. Any exception is
reported as WorkerError before the process exits; so is the parent's death (it exits).
A Ray actor (executor/ray_worker.py) runs the same `serve_worker`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional

import zmq

from tessera.config import EngineConfig
from tessera.executor import messages as msg
from tessera.executor.messaging import connect_secured
from tessera.gc_tuning import freeze_after_startup
from tessera.lifeline import die_with_parent, parent_alive
from tessera.logs import setup_logging

logger = logging.getLogger("tessera.worker")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    for name in ("--config", "--dist-init", "--input", "--output"):
        ap.add_argument(name, required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    die_with_parent(args.parent_pid)  # lifeline.py: never outlive the engine process
    setup_logging(args.log_level, f"rank{args.rank}")

    def wanted() -> bool:
        return parent_alive(args.parent_pid)
    return serve_worker(EngineConfig.from_json(args.config), args.rank, args.dist_init,
                        args.input, args.output, wanted)


def serve_worker(config: EngineConfig, rank: int, dist_init: str, input_addr: str,
                 output_addr: str, wanted: Callable[[], bool],
                 local_gpu: Optional[int] = None, server_key: Optional[str] = None) -> int:
    """Connects to the executor's sockets (encrypted when server_key, the executor's
    public CURVE key, is given), builds the Worker and serves its messages until
    Shutdown (0) or an error, which it reports as WorkerError (1). `wanted()` is asked
    whenever a second passes without a message: False means the engine is gone."""
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    connect_secured(inbox, input_addr, server_key)
    outbox = ctx.socket(zmq.PUSH)
    connect_secured(outbox, output_addr, server_key)
    try:
        _run(config, rank, dist_init, inbox, outbox, wanted, local_gpu)
    except Exception as e:
        logger.exception("worker failed")
        outbox.send(msg.encoder.encode(msg.WorkerError(rank, f"{type(e).__name__}: {e}")))
        return 1
    finally:
        inbox.close(linger=0)
        outbox.close(linger=2000)
        ctx.term()
    return 0


def _run(config, rank, dist_init, inbox, outbox, wanted, local_gpu) -> None:
    from tessera.worker.worker import Worker

    worker = Worker(config, rank, dist_init, local_gpu=local_gpu)
    runner = worker.runner
    outbox.send(msg.encoder.encode(msg.Hello(rank, runner.num_kv_blocks(), worker.info)))
    while True:
        if not inbox.poll(1000):
            if not wanted():
                raise RuntimeError("the engine process is gone")
            continue
        m = msg.to_worker.decode(inbox.recv())
        if isinstance(m, msg.Shutdown):
            worker.shutdown()
            return
        if isinstance(m, msg.InitCache):
            runner.init_kv_cache(m.num_blocks, num_host_blocks=m.num_host_blocks)
            freeze_after_startup()  # gc_tuning.py: no full collections walking start-up
            outbox.send(msg.encoder.encode(msg.Ack(rank, worker.info.memory)))
        elif isinstance(m, msg.Step):
            out = runner.execute(m.sched)
            if worker.returns_output:
                outbox.send(msg.encoder.encode(msg.StepDone(out)))


if __name__ == "__main__":
    sys.exit(main())
