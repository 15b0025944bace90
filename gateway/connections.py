"""The node's HTTP connections, guarded against clients that hold them: uvicorn's httptools
protocol with a **header timeout** (a connection that has not sent a request's headers this
long after it opened, or after the request began, is answered 408 and closed — a client
trickling a byte a second, or sending nothing, cannot keep it) and a **connection limit**
(beyond it, a new connection is answered 503 at once and closed, before it costs more than a
file descriptor). Idle keep-alive connections are closed by uvicorn's own keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime.responses import error_body

log = logging.getLogger("edgefaas.gateway")
FD_HEADROOM = 256  # descriptors kept for workers, Redis, bundles, logs


def _answer(status: str, code: str, message: str) -> bytes:
    body = error_body(code, message)
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


TIMED_OUT = _answer(
    "408 Request Timeout", "request_timeout", "the request's headers did not arrive in time"
)
TOO_MANY = _answer(
    "503 Service Unavailable", "too_many_connections", "too many open connections; try again"
)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """An httptools protocol class with these limits (uvicorn makes one per connection)."""

    class GuardedProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(TOO_MANY)
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(TIMED_OUT)
                self.transport.close()

    return GuardedProtocol


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's open-files limit to fit ``wanted`` connections and the node's
    own descriptors (up to the hard limit); the connections the limit then allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_HEADROOM
    ceiling = hard if hard != resource.RLIM_INFINITY else need
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = min(need, ceiling)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    allowed = wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - FD_HEADROOM)
    if allowed < wanted:
        log.warning(
            "open files are limited to %d here: the node takes at most %d connections",
            soft,
            allowed,
        )
    return max(1, allowed)


def uvicorn_options(header_timeout_s: float, keep_alive_s: float, max_connections: int) -> Any:
    """The part of uvicorn's Config these guards set."""
    allowed = raise_open_files_limit(max_connections)
    return {
        "http": guarded_protocol(header_timeout_s, allowed),
        "timeout_keep_alive": keep_alive_s,
    }
