"""What crosses the API <-> engine sockets cannot take the engine down (issue 17).

- The engine process: a frame that does not decode (a boolean where an integer goes, a
  value SamplingParams refuses, garbage) is refused for its request alone (Rejected 400
  when its id can be read) and the next frame is served.
- The API process: a full send queue is backpressure: the request is refused with 503
  and the engine is not declared dead; a child already sent is aborted, and an abort that
  cannot be sent yet waits for the next engine message instead of being lost.
Sockets are stand-ins here; the real ones are exercised by tests/server.
"""
from __future__ import annotations

import msgspec
import pytest
import zmq

from tessera.config import EngineConfig, ModelConfig
from tessera.engine import ipc
from tessera.engine.core_handle import CoreProcess
from tessera.engine.core_proc import EngineProc
from tessera.engine.mp_client import MPClient, RequestRejected
from tessera.engine.router import Router
from tessera.frontend.input import PreparedPrompt
from tessera.sampling_params import SamplingParams


class Inbox:
    def __init__(self, frames):
        self.frames = list(frames)

    def poll(self, timeout):
        return bool(self.frames)

    def recv(self):
        return self.frames.pop(0)


class Outbox:
    def __init__(self, full: bool = False):
        self.sent, self.full = [], full

    def send(self, frame, flags=0):
        if self.full:
            raise zmq.Again()
        self.sent.append(frame)


class Core:
    def __init__(self):
        self.added = []

    def has_unfinished(self):
        return False

    def add_request(self, req):
        self.added.append(req.request_id)


def add_request_frame(rid: str, **params) -> bytes:
    """An AddRequest as msgpack, its params as given (not validated on this side)."""
    return msgspec.msgpack.encode({"type": "AddRequest", "request_id": rid,
                                   "prompt_token_ids": [1, 2], "params": params})


def test_a_frame_that_does_not_decode_costs_its_request_alone():
    proc = EngineProc.__new__(EngineProc)
    proc.core, proc.outbox, proc.eos = Core(), Outbox(), (2,)
    proc.inbox = Inbox([add_request_frame("bool", max_tokens=True),
                        add_request_frame("nan", temperature=float("nan")),
                        b"\xc1 not msgpack",
                        add_request_frame("good", max_tokens=4)])
    proc._drain_inbox()
    assert proc.core.added == ["good"]
    replies = [ipc.engine_decoder.decode(f) for f in proc.outbox.sent]
    assert [(r.request_id, r.status) for r in replies] == [("bool", 400), ("nan", 400)]
    assert "max_tokens" in replies[0].message  # msgspec: "Expected `int | null`, got `bool`"
    assert "temperature must be a finite number" in replies[1].message


def client(full: bool) -> MPClient:
    """An MPClient with one engine process whose send socket is an Outbox."""
    c = MPClient.__new__(MPClient)
    core = CoreProcess(EngineConfig(ModelConfig("m")))
    core._to_engine = Outbox(full)
    c.cores, c.router, c.dead, c.observers = [core], Router(1, 16, 256), None, []
    c._children, c._child_parent, c._replica_of, c._pending_aborts = {}, {}, {}, []
    return c


def test_a_full_send_queue_refuses_the_request_and_keeps_the_engine():
    c = client(full=True)
    with pytest.raises(RequestRejected) as info:
        c._send_children("r", PreparedPrompt(None, [1, 2]), [("r-0", SamplingParams())])
    assert info.value.status == 503 and c.dead is None


def test_children_sent_before_the_queue_filled_are_aborted_later():
    c = client(full=False)
    outbox = c.cores[0]._to_engine
    sent = outbox.sent

    def fill_after_first(frame, flags=0):
        if sent:
            raise zmq.Again()
        sent.append(frame)
    outbox.send = fill_after_first
    with pytest.raises(RequestRejected):
        c._send_children("r", PreparedPrompt(None, [1, 2]),
                         [("r-0", SamplingParams()), ("r-1", SamplingParams())])
    assert c._pending_aborts == [(0, "r-0")]  # the queue was still full for the abort
    outbox.send = lambda frame, flags=0: sent.append(frame)
    c._flush_aborts()  # what the reader does on every engine message
    assert ipc.client_decoder.decode(sent[-1]) == ipc.AbortRequests(["r-0"])
    assert c._pending_aborts == [] and c.dead is None


def test_a_fault_admitting_one_request_costs_that_request_alone():
    class Faulty(Core):
        def add_request(self, req):
            if req.request_id == "boom":
                raise RuntimeError("a bug in admission")
            super().add_request(req)
    proc = EngineProc.__new__(EngineProc)
    proc.core, proc.outbox, proc.eos = Faulty(), Outbox(), (2,)
    proc.inbox = Inbox([add_request_frame("boom", max_tokens=4),
                        add_request_frame("good", max_tokens=4)])
    proc._drain_inbox()
    assert proc.core.added == ["good"]
    (reply,) = [ipc.engine_decoder.decode(f) for f in proc.outbox.sent]
    assert (reply.request_id, reply.status) == ("boom", 500)
    assert "incident" in reply.message and "a bug" not in reply.message  # no internals


def test_a_request_that_failed_in_a_step_is_rejected_with_500():
    from tessera.engine.protocol import EngineCoreOutput
    proc = EngineProc.__new__(EngineProc)
    proc.outbox = Outbox()
    failed = EngineCoreOutput("bad", [], [], [], "error", "Internal error (incident 1a2b)")
    fine = EngineCoreOutput("good", [5], [], [])
    assert proc._send_failures([failed, fine]) == [fine]
    (reply,) = [ipc.engine_decoder.decode(f) for f in proc.outbox.sent]
    assert reply == ipc.Rejected("bad", "Internal error (incident 1a2b)", 500)
