"""The engine core process: runs the EngineCore busy loop, talks ZMQ.

Started by the MPClient (engine/mp_client.py) as `python -m tessera.engine.core_proc`
with the engine config, its resolved model metadata included, as JSON on the command line
(no pickle anywhere). Its executor loads the model (in this process, or in worker
processes of its own). It connects a PULL socket for
ClientMessages and a PUSH socket for EngineMessages, sends Ready once the model and KV
cache are up (or Fatal), then loops: take every pending message (block only when idle),
run one step, push its outputs with a stats snapshot. A message that does not decode, or
a request the core refuses (token ids outside the vocabulary, a full queue), costs that
request alone (Rejected); so does a request that fails in a step (the worker isolates
it: worker/step_faults.py; Rejected 500). It exits on Shutdown, when its parent dies, or
on a device or worker failure in the step loop (after sending Fatal).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid

import msgspec
import zmq

from tessera.config import EngineConfig
from tessera.engine import ipc
from tessera.engine.request import Request
from tessera.engine.scheduler import QueueFullError
from tessera.lifeline import die_with_parent, parent_alive
from tessera.logs import setup_logging

logger = logging.getLogger("tessera.engine")
IDLE_POLL_MS = 200
STATS_INTERVAL_S = 1.0


class EngineProc:
    def __init__(self, config: EngineConfig, input_addr: str, output_addr: str,
                 parent_pid: int):
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.connect(input_addr)
        self.outbox = self.ctx.socket(zmq.PUSH)
        self.outbox.connect(output_addr)
        self.eos = config.info.arch.eos_token_ids
        self.parent = parent_pid
        self.running = True
        try:
            self.core = self._build(config)
        except Exception as e:  # tell the API process why (it prints it), then die
            logger.debug("engine failed to start", exc_info=True)
            self._send(ipc.Fatal(f"{type(e).__name__}: {e}"))
            raise

    def _build(self, config: EngineConfig):
        from tessera.engine.core import EngineCore
        from tessera.gc_tuning import freeze_after_startup

        logger.info("engine process %d up: loading the model", os.getpid())
        core = EngineCore(config)
        freeze_after_startup()  # gc_tuning.py: no full collections walking start-up
        self._send(ipc.Ready(core.num_blocks, config.cache.block_size, config.max_model_len,
                             core.executor.info))
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
            except Exception:  # a fault admitting one request costs that request alone
                incident = uuid.uuid4().hex[:12]
                logger.exception("request %s could not be admitted (incident %s)",
                                 msg.request_id, incident)
                self._send(ipc.Rejected(msg.request_id, f"Internal error admitting the "
                                        f"request (incident {incident}; the server's log has "
                                        f"the details).", 500))
        elif isinstance(msg, ipc.AbortRequests):
            self.core.abort(msg.request_ids)
        elif isinstance(msg, ipc.Shutdown):
            self.running = False

    def _drain_inbox(self) -> None:
        timeout = 0 if self.core.has_unfinished() else IDLE_POLL_MS
        while self.inbox.poll(timeout):
            frame = self.inbox.recv()
            timeout = 0
            try:
                msg = ipc.client_decoder.decode(frame)
            except msgspec.MsgspecError as e:  # a bad frame costs its request, nothing more
                self._refuse_frame(frame, e)
                continue
            self._handle(msg)

    def _refuse_frame(self, frame: bytes, error: Exception) -> None:
        """A frame that does not decode (a wrong type, a value SamplingParams refuses):
        Rejected (400) for its request where its id can be read, else logged and dropped."""
        try:
            loose = msgspec.msgpack.decode(frame)
        except msgspec.MsgspecError:
            loose = None
        rid = loose.get("request_id") if isinstance(loose, dict) else None
        logger.warning("refused a message from the API process (request %r): %s", rid, error)
        if isinstance(rid, str):
            self._send(ipc.Rejected(rid, f"invalid request: {error}", 400))

    def _send_failures(self, outputs: list) -> list:
        """Requests that failed in the worker (finish reason "error") are Rejected (500,
        the message naming the incident); the rest go out as usual."""
        failed = [out for out in outputs if out.finish_reason == "error"]
        for out in failed:
            self._send(ipc.Rejected(out.request_id, str(out.stop_reason), 500))
        return [out for out in outputs if out.finish_reason != "error"] if failed else outputs

    def run(self) -> None:
        last_stats = 0.0
        while self.running:
            if not parent_alive(self.parent):
                logger.error("the API process is gone; the engine exits")
                self.core.shutdown()
                return
            self._drain_inbox()
            outputs = self.core.step() if self.core.has_unfinished() else []
            outputs = self._send_failures(outputs)
            now = time.monotonic()
            if outputs or self.core.scheduler.queue_times or now - last_stats > STATS_INTERVAL_S:
                queue_times, self.core.scheduler.queue_times = self.core.scheduler.queue_times, {}
                self._send(ipc.Outputs(outputs, ipc.stats_from(self.core.stats()), queue_times))
                last_stats = now
        self.core.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    die_with_parent(args.parent_pid)  # lifeline.py: never outlive the API process
    setup_logging(args.log_level, "engine")
    try:
        proc = EngineProc(EngineConfig.from_json(args.config), args.input, args.output,
                          args.parent_pid)
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
