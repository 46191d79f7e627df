"""uvicorn's HTTP/1.1 (h11) protocol with the guards a public server needs (issue 17).

`guarded_protocol(read_timeout_s, max_connections)` returns a subclass of uvicorn's
H11Protocol, given to uvicorn as its `http` protocol class:
- a connection beyond `max_connections` open ones is answered 503 (the OpenAI error shape)
  and closed at once, before anything is read: half-open connections cannot use up the
  process's file descriptors and lock everyone out;
- a request's headers and body must arrive within `read_timeout_s` of its first byte (or
  of the connection opening): a slower client (slowloris, a stalled upload) is answered
  408 and dropped. The clock stops once the body is in; generation time is not bounded
  here. Idle keep-alive connections are closed by uvicorn's own keep-alive timeout.
`raise_open_file_limit()` (the soft open-file limit raised to the hard one; the server
calls it at start) and `default_max_connections(open_files)`: that limit less a margin
for the process's own files and sockets.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

from tessera.server.errors import error_body

logger = logging.getLogger("tessera.server")
FD_MARGIN = 128  # descriptors kept for the process's own files, sockets and pipes
_REASONS = {408: b"Request Timeout", 503: b"Service Unavailable"}


def raise_open_file_limit() -> Optional[int]:
    """Raises the soft open-file limit to the hard one (a server holds a descriptor per
    connection); returns the soft limit now (None: unlimited; 1024 where it cannot be read:
    not a POSIX system)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(open_files: Optional[int]) -> int:
    """The connection limit for an open-file limit (None: unlimited): it less FD_MARGIN,
    at least 16; 65536 when unlimited."""
    if open_files is None:
        return 65536
    return max(16, open_files - FD_MARGIN)


def guarded_protocol(read_timeout_s: float, max_connections: Optional[int]) -> type:
    class GuardedH11(H11Protocol):
        _deadline: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                logger.warning("refused a connection: %d are open (--max-connections)",
                               len(self.connections) - 1)
                self._refuse(503, "The server has too many open connections; retry later.")
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # a new request on a kept-alive connection starts its clock
            super().data_received(data)
            if self.cycle is not None and not self.cycle.more_body:
                self._disarm()  # headers and body are in

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.response_started:
                return
            self._refuse(408, f"The request did not arrive within {read_timeout_s:g} s "
                              "(--request-read-timeout).")

        def _refuse(self, status: int, message: str) -> None:
            """A complete response written past h11 (the request may be half-read), then
            the connection closed; an app already waiting on the body sees a disconnect."""
            body = json.dumps(error_body(status, message)).encode()
            head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n"
                    % (status, _REASONS[status], len(body)))
            self.transport.write(head + body)
            self.transport.close()

    return GuardedH11
