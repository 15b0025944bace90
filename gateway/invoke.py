"""The call path: ``/function/{name}[/{rest}]`` and the manifest's trigger paths.

A plain ASGI endpoint, because it is the hot path: it reads the body (refusing oversize ones
before reading them), asks the pool for admission — the one decision point where a call is
served here or refused (later: sent to a peer or the cloud) — waits for the worker's answer
and writes it with ``X-Call-Id``, ``X-Served-By`` and ``X-Duration-Seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from gateway.errors import (
    BadRequest,
    GatewayError,
    Headers,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_response,
    internal_error_response,
)
from runtime.errors import RuntimeFailure, Unavailable
from runtime.event import build_header_block

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("edgefaas.gateway")
_CALL_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
STATUS_CLIENT_GONE = 499  # as nginx logs it: the client closed the request
_CUT_OFF = "the node is stopping and its grace period ended before the call finished"
_SERVED_LOCAL = (b"x-served-by", b"local")


class CallIds:
    """Call ids unique across nodes and restarts: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = 0

    def next(self) -> str:
        self._count += 1
        return f"{self._prefix}-{self._count:x}"


class Invoker:
    """Serves one call end to end. The gateway's front door (:class:`gateway.app.Gateway`)
    has already found the function name and the path its handler sees."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pools = node.supervisor.pools
        self.metrics = node.metrics
        self.max_body = node.settings.max_body_bytes
        self.call_log = node.call_log

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        path: str,
        methods: tuple[str, ...] | None = None,
    ) -> None:
        """Serve a call to function ``name``; ``methods`` restricts a trigger path's methods."""
        started = time.perf_counter()
        call_id = self.node.call_ids.next()
        pool = self.pools.get(name)
        try:
            given, length = self._read_headers(scope["headers"])
            call_id = given or call_id
            if methods is not None and scope["method"] not in methods:
                raise MethodNotAllowed(
                    f"{path} accepts {', '.join(methods)}, not {scope['method']}", methods
                )
            if pool is None:
                raise NotFound(f"no function named {name!r} on this node")
            if length > self.max_body:
                raise PayloadTooLarge(self._too_large(length))
            body = await self._read_body(receive)
            pool = self.pools.get(name, pool)  # a new version may have taken over meanwhile
            admission = pool.admit()
            if not admission.admitted:
                raise admission.failure()
            call = pool.submit(
                scope["method"].encode(),
                path.encode(),
                scope["query_string"],
                build_header_block(scope["headers"]),
                call_id,
                body,
            )
            result = await call.future
            status, body = result.status, result.body
            headers = _split_headers(result.headers)
        except (GatewayError, RuntimeFailure) as exc:
            status, headers, body = error_response(exc)
        except ClientGone:  # nobody to answer; the call did not reach a worker
            self._record(name, call_id, started, STATUS_CLIENT_GONE)
            return
        except asyncio.CancelledError:  # the node's grace period ended during the call
            status, headers, body = error_response(Unavailable(_CUT_OFF))
            await self._respond(send, name, call_id, started, status, headers, body)
            raise
        except Exception:
            log.exception("call to %s failed inside the gateway", name)
            status, headers, body = internal_error_response()
        await self._respond(send, name, call_id, started, status, headers, body)

    async def _respond(
        self,
        send: Send,
        name: str,
        call_id: str,
        started: float,
        status: int,
        headers: Headers,
        body: bytes,
    ) -> None:
        elapsed = time.perf_counter() - started
        headers.append((b"content-length", b"%d" % len(body)))
        headers.append((b"x-call-id", call_id.encode()))
        headers.append(_SERVED_LOCAL)
        headers.append((b"x-duration-seconds", b"%.6f" % elapsed))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._record(name, call_id, started, status)

    def _record(self, name: str, call_id: str, started: float, status: int) -> None:
        elapsed = time.perf_counter() - started
        if name in self.pools:
            self.metrics.observe_call(name, status, elapsed)
        if self.call_log is not None:
            self.call_log.record(name, status, elapsed, "local", call_id)

    def _read_headers(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, int]:
        call_id = ""
        length = 0
        for key, value in headers:
            if key == b"content-length":
                length = _content_length(value)
            elif key == b"x-call-id":
                call_id = value.decode("latin-1")
                if not _CALL_ID.fullmatch(call_id):
                    raise BadRequest("X-Call-Id: expected 1–64 characters from A–Z a–z 0–9 . _ : -")
        return call_id, length

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, refused with 413 as soon as it passes the limit."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > self.max_body:
            raise PayloadTooLarge(self._too_large(len(body), streamed=more))
        if not more:
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(self._too_large(size, streamed=True))
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: int, streamed: bool = False) -> str:
        amount = f"more than {size}" if streamed else f"{size}"
        return f"request body of {amount} bytes exceeds this node's limit of {self.max_body} bytes"


class ClientGone(Exception):
    """The client disconnected before it sent the whole body."""


def _content_length(value: bytes) -> int:
    try:
        length = int(value)
    except ValueError:
        raise BadRequest(f"Content-Length: expected a number of bytes, got {value!r}") from None
    if length < 0:
        raise BadRequest(f"Content-Length: expected a number of bytes, got {length}")
    return length


def _split_headers(block: bytes) -> Headers:
    if not block:
        return []
    return [
        (name, value) for name, _, value in (line.partition(b":") for line in block.split(b"\n"))
    ]
