"""The engine process: loads the model, runs the EngineCore busy loop, talks ZMQ.

Started by the server's EngineClient as `python -m tessera.engine_proc` with the engine
config as JSON on the command line (no pickle anywhere). It connects a PULL socket for
ClientMessages and a PUSH socket for EngineMessages, sends Ready once the model and KV
cache are up (or Fatal), then loops: take every pending message (block only when idle),
run one step, push its outputs with a stats snapshot. It exits on Shutdown, when its
parent dies, or on an error (after sending Fatal).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

import zmq

from tessera.config import CacheConfig, EngineConfig, ModelConfig, ParallelConfig, SchedulerConfig
from tessera.engine import ipc
from tessera.engine.request import Request
from tessera.engine.scheduler import QueueFullError

logger = logging.getLogger("tessera.engine")
IDLE_POLL_MS = 200
STATS_INTERVAL_S = 1.0


def config_to_json(config: EngineConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def config_from_json(text: str) -> EngineConfig:
    d = json.loads(text)
    return EngineConfig(ModelConfig(**d["model"]), CacheConfig(**d["cache"]),
                        SchedulerConfig(**d["scheduler"]), ParallelConfig(**d["parallel"]))


class EngineProc:
    def __init__(self, config: EngineConfig, eos_token_ids: tuple[int, ...], max_model_len: int,
                 input_addr: str, output_addr: str):
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.connect(input_addr)
        self.outbox = self.ctx.socket(zmq.PUSH)
        self.outbox.connect(output_addr)
        self.eos = eos_token_ids
        self.parent = os.getppid()
        self.running = True
        try:
            self.core = self._build(config, max_model_len)
        except Exception as e:  # tell the API process why, then die
            logger.exception("engine failed to start")
            self._send(ipc.Fatal(f"{type(e).__name__}: {e}"))
            raise

    def _build(self, config: EngineConfig, max_model_len: int):
        from tessera.gc_tuning import freeze_after_startup
        from tessera.llm_engine import build_core
        from tessera.models.loader import resolve_model

        source = resolve_model(config.model)
        source.arch = dataclasses.replace(source.arch, eos_token_ids=self.eos)
        core = build_core(config, source, max_model_len)
        freeze_after_startup()  # gc_tuning.py: no full collections walking start-up
        info = core.executor.describe()
        self._send(ipc.Ready(core.num_blocks, config.cache.block_size, max_model_len,
                             info["load_seconds"], info["weight_gib"], info["device"],
                             info["dtype"], str(info.get("kv_cache_dtype", info["dtype"]))))
        return core

    def _send(self, msg) -> None:
        self.outbox.send(ipc.encoder.encode(msg))

    def _handle(self, msg) -> None:
        if isinstance(msg, ipc.AddRequest):
            try:
                self.core.add_request(Request(msg.request_id, msg.prompt_token_ids, msg.params,
                                              self.eos))
            except QueueFullError as e:
                self._send(ipc.Rejected(msg.request_id, str(e), 503))
            except ValueError as e:
                self._send(ipc.Rejected(msg.request_id, str(e), 400))
        elif isinstance(msg, ipc.AbortRequests):
            self.core.abort(msg.request_ids)
        elif isinstance(msg, ipc.Shutdown):
            self.running = False

    def _drain_inbox(self) -> None:
        timeout = 0 if self.core.has_unfinished() else IDLE_POLL_MS
        while self.inbox.poll(timeout):
            self._handle(ipc.client_decoder.decode(self.inbox.recv()))
            timeout = 0

    def run(self) -> None:
        last_stats = 0.0
        while self.running:
            if os.getppid() != self.parent:
                logger.error("the API process is gone; the engine exits")
                return
            self._drain_inbox()
            outputs = self.core.step() if self.core.has_unfinished() else []
            now = time.monotonic()
            if outputs or self.core.scheduler.queue_times or now - last_stats > STATS_INTERVAL_S:
                queue_times, self.core.scheduler.queue_times = self.core.scheduler.queue_times, {}
                self._send(ipc.Outputs(outputs, ipc.stats_from(self.core.stats()), queue_times))
                last_stats = now


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--eos", default="")
    ap.add_argument("--max-model-len", type=int, required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    eos = tuple(int(x) for x in args.eos.split(",") if x)
    try:
        proc = EngineProc(config_from_json(args.config), eos, args.max_model_len, args.input,
                          args.output)
    except Exception:
        return 1
    try:
        proc.run()
    except Exception as e:
        logger.exception("engine loop failed")
        proc._send(ipc.Fatal(f"{type(e).__name__}: {e}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
