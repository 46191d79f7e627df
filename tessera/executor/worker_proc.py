"""One tensor-parallel worker process: `python -m tessera.executor.worker_proc`.

Flow: join the TP process group -> load this rank's shard of the model (each parameter's
weight_loader keeps its slice) -> send Hello (KV-block estimate) -> loop on messages:
InitCache, Step (run this stage's layers on the shared SchedulerOutput; TP rank 0 of the
last stage returns the sampled tokens, the other ranks only take part in the collectives
and pass hidden states on), Shutdown. Any exception is
reported as WorkerError before the process exits; so is the parent's death (it exits).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

import torch
import zmq

from tessera.executor import messages as msg
from tessera.gc_tuning import freeze_after_startup

logger = logging.getLogger("tessera.worker")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    for name in ("--config", "--eos", "--dist-init", "--input", "--output"):
        ap.add_argument(name, required=name != "--eos", default="")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s rank{args.rank} %(name)s: "
                                                   "%(message)s")
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.connect(args.input)
    outbox = ctx.socket(zmq.PUSH)
    outbox.connect(args.output)
    try:
        run(args, inbox, outbox)
    except Exception as e:
        logger.exception("worker failed")
        outbox.send(msg.encoder.encode(msg.WorkerError(args.rank, f"{type(e).__name__}: {e}")))
        outbox.close(linger=2000)
        return 1
    return 0


def run(args, inbox, outbox) -> None:
    from tessera.distributed.parallel_state import init_parallel, set_expert_parallel
    from tessera.engine_proc import config_from_json
    from tessera.models.loader import resolve_model
    from tessera.worker.model_runner import ModelRunner

    config = config_from_json(args.config)
    cuda = config.model.torch_device.type == "cuda"
    if cuda:
        torch.cuda.set_device(args.rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world))
    par = config.parallel
    init_parallel(args.rank, par.tensor_parallel_size, par.pipeline_parallel_size,
                  args.dist_init, "nccl" if cuda else "gloo", par.collective_timeout_s,
                  par.pp_layer_partition)
    set_expert_parallel(config.parallel.enable_expert_parallel)
    source = resolve_model(config.model)
    eos = tuple(int(x) for x in args.eos.split(",") if x)
    source.arch = dataclasses.replace(source.arch, eos_token_ids=eos)
    runner = ModelRunner(config, source)
    outbox.send(msg.encoder.encode(msg.Hello(args.rank, runner.num_kv_blocks(),
                                             runner.describe())))
    parent = os.getppid()
    while True:
        if not inbox.poll(1000):
            if os.getppid() != parent:
                raise RuntimeError("the engine process is gone")
            continue
        m = msg.to_worker.decode(inbox.recv())
        if isinstance(m, msg.Shutdown):
            return
        if isinstance(m, msg.InitCache):
            runner.init_kv_cache(m.num_blocks)
            freeze_after_startup()  # gc_tuning.py: no full collections walking start-up
            outbox.send(msg.encoder.encode(msg.Ack(args.rank)))
        elif isinstance(m, msg.Step):
            out = runner.execute(m.sched)
            if args.rank == args.world - par.tensor_parallel_size:  # TP rank 0 of the last stage
                outbox.send(msg.encoder.encode(msg.StepDone(out)))


if __name__ == "__main__":
    sys.exit(main())
