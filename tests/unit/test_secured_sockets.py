"""The executor's sockets on a network are CURVE-encrypted (executor/messaging.py): a
worker handed the executor's public key connects and is heard; a peer that connects in
plain text, or with another key, gets nothing through (nor can it read what is sent)."""
from __future__ import annotations

import zmq

from tessera.executor.messaging import _secured, connect_secured


def _pull_server():
    ctx = zmq.Context.instance()
    keys = zmq.curve_keypair()
    pull = _secured(ctx.socket(zmq.PULL), keys)
    pull.bind("tcp://127.0.0.1:*")
    return pull, pull.getsockopt(zmq.LAST_ENDPOINT).decode(), keys[0].decode()


def _sent_through(pull, push) -> bool:
    if push.poll(1000, zmq.POLLOUT):  # a peer that never completes the handshake: never
        push.send(b"step", flags=zmq.NOBLOCK)
    got = pull.poll(1500)
    if got:
        pull.recv()
    push.close(linger=0)
    return bool(got)


def test_only_a_peer_with_the_executors_key_gets_through():
    ctx = zmq.Context.instance()
    pull, address, server_key = _pull_server()
    plain = ctx.socket(zmq.PUSH)
    plain.connect(address)
    assert not _sent_through(pull, plain)
    wrong = ctx.socket(zmq.PUSH)
    connect_secured(wrong, address, zmq.curve_keypair()[0].decode())
    assert not _sent_through(pull, wrong)
    worker = ctx.socket(zmq.PUSH)
    connect_secured(worker, address, server_key)
    assert _sent_through(pull, worker)
    pull.close(linger=0)


def test_without_a_key_the_sockets_are_plain():
    ctx = zmq.Context.instance()
    pull = _secured(ctx.socket(zmq.PULL), None)
    pull.bind("tcp://127.0.0.1:*")
    push = ctx.socket(zmq.PUSH)
    connect_secured(push, pull.getsockopt(zmq.LAST_ENDPOINT).decode(), None)
    assert _sent_through(pull, push)
    pull.close(linger=0)
