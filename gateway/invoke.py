"""The call path: ``/function/{name}[/{rest}]`` and the manifest's trigger paths.

A plain ASGI endpoint, because it is the hot path: it reads the body (refusing oversize ones
before reading them), asks the :class:`~gateway.mesh.router.Router` where the call is served —
here, on a peer, in the cloud, or nowhere (429) — and writes the answer with ``X-Call-Id``,
``X-Served-By`` and ``X-Duration-Seconds``. A call another node forwarded is checked (mesh
signature, no replay, same digest) and then served here or refused, never sent on.
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
    Conflict,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    error_response,
    internal_error_response,
)
from gateway.mesh.forward import DIGEST_HEADER, HOP_HEADER, REFUSED_HEADER
from gateway.mesh.router import Outgoing, signed_target
from registry.defaults import HTTP_METHODS
from registry.errors import MeshAuthError
from registry.meshauth import NONCE_HEADER, ReplayGuard, verify_request
from runtime.errors import Headers, Overloaded, RuntimeFailure, Unavailable
from runtime.event import build_header_block

if TYPE_CHECKING:
    from gateway.calllog import CallLog
    from gateway.mesh.router import Router
    from gateway.metrics import Metrics
    from gateway.records.buffer import CallRecords
    from runtime.pool import WarmPool

log = logging.getLogger("edgefaas.gateway")
_CALL_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
STATUS_CLIENT_GONE = 499  # as nginx logs it: the client closed the request
_CUT_OFF = "the node is stopping and its grace period ended before the call finished"
MAX_DEADLINE_MS = 3_600_000


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

    def __init__(
        self,
        node_name: str,
        pools: dict[str, WarmPool],
        router: Router,
        records: CallRecords,
        call_ids: CallIds,
        *,
        metrics: Metrics,
        call_log: CallLog | None,
        max_body_bytes: int,
    ) -> None:
        self.node_name = node_name
        self.pools = pools  # the supervisor's, updated in place as versions switch
        self.router = router
        self.records = records
        self.call_ids = call_ids
        self.metrics = metrics
        self.call_log = call_log
        self.max_body = max_body_bytes
        self.replays = ReplayGuard()

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
        route = Route(self.call_ids.next(), time.perf_counter())
        try:
            status, headers, body = await self._serve(scope, receive, name, path, methods, route)
        except Refused as exc:
            status, headers, body = error_response(exc.failure)
            headers.append((REFUSED_HEADER, exc.reason.encode()))
            route.reason = route.reason or exc.reason
        except Overloaded as exc:
            status, headers, body = error_response(exc)
            route.reason = exc.reason
        except GatewayError as exc:
            status, headers, body = error_response(exc)
            if route.forwarded:  # refused before it reached a worker: the sender goes on
                headers.append((REFUSED_HEADER, exc.code.encode()))
        except RuntimeFailure as exc:
            status, headers, body = error_response(exc)
        except ClientGone:  # nobody to answer; the call did not reach a worker
            route.served_by, route.reason = "none", "client_gone"
            self._record(name, route, STATUS_CLIENT_GONE)
            return
        except asyncio.CancelledError:  # the node's grace period ended during the call
            status, headers, body = error_response(Unavailable(_CUT_OFF))
            await self._respond(send, name, route, status, headers, body)
            raise
        except Exception:
            log.exception("call to %s failed inside the gateway", name)
            status, headers, body = internal_error_response()
        await self._respond(send, name, route, status, headers, body)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        name: str,
        path: str,
        methods: tuple[str, ...] | None,
        route: Route,
    ) -> tuple[int, Headers, bytes]:
        pool = self.pools.get(name)
        given, length, deadline_s, forwarded = self._read_headers(scope["headers"])
        route.call_id = given or route.call_id
        route.forwarded = forwarded
        check_target(scope, path, methods)
        if pool is None:
            raise _refused_if(forwarded, NotFound(f"no function named {name!r} here"))
        if length > self.max_body:
            raise PayloadTooLarge(self._too_large(length))
        body = await self._read_body(receive)
        route.request_bytes = len(body)
        pool = self.pools.get(name, pool)  # a new version may have taken over meanwhile
        headers_in = scope["headers"]
        if forwarded:
            self._check_forwarded(scope, body, pool, route.call_id)
            headers_in = [h for h in headers_in if not h[0].startswith(b"x-edgefaas-")]
        admission, route.reason = self.router.admit(pool, deadline_s, forwarded)
        if admission.admitted:
            call = pool.submit(
                scope["method"].encode(),
                path.encode(),
                scope["query_string"],
                build_header_block(headers_in),
                route.call_id,
                body,
            )
            result = await call.future
            return result.status, _split_headers(result.headers), result.body
        if forwarded:  # one hop only: the node that sent it routes it further
            raise Refused(admission.failure(), route.reason)
        outgoing = Outgoing(
            name,
            scope["method"],
            _raw_target(scope),
            scope["headers"],
            body,
            route.call_id,
            route.started,
            deadline_s,
        )
        served = await self.router.spill(pool, admission, route.reason, outgoing)
        route.served_by = served.served_by
        return served.status, served.headers, served.body

    def _check_forwarded(self, scope: Scope, body: bytes, pool: WarmPool, call_id: str) -> None:
        """A call another node forwarded: it must be signed with the mesh key for this
        node, not replayed, and meant for the version that runs here."""
        headers = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key.startswith(b"x-edgefaas-")
        }
        digest = headers.get(DIGEST_HEADER.decode(), "")
        try:
            verify_request(
                self.router.mesh_key,
                scope["method"],
                signed_target(_raw_target(scope), digest, call_id),
                headers,
                self.node_name,
                body=body,
            )
            self.replays.check(headers[NONCE_HEADER])
        except MeshAuthError as exc:
            raise Unauthorized(f"forwarded call refused: {exc}") from None
        if digest != pool.digest:
            runs = pool.digest[:12] or "a local manifest"
            raise Refused(
                Conflict(f"this node runs {pool.name} {runs}, not {digest[:12] or '?'}"),
                "digest",
            )

    async def _respond(
        self, send: Send, name: str, route: Route, status: int, headers: Headers, body: bytes
    ) -> None:
        elapsed = time.perf_counter() - route.started
        headers.append((b"content-length", b"%d" % len(body)))
        headers.append((b"x-call-id", route.call_id.encode()))
        headers.append((b"x-served-by", route.served_by.encode()))
        headers.append((b"x-duration-seconds", b"%.6f" % elapsed))
        route.response_bytes = len(body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._record(name, route, status)

    def _record(self, name: str, route: Route, status: int) -> None:
        elapsed = time.perf_counter() - route.started
        reason = route.reason or ("error" if status >= 400 else "")
        if name in self.pools:
            self.metrics.observe_call(name, status, elapsed)
            if reason:
                refused = status in (429, 503) and route.served_by == "local"
                self.metrics.observe_route(name, "none" if refused else route.served_by, reason)
        if self.call_log is not None:
            self.call_log.record(name, status, elapsed, route.served_by, route.call_id, reason)
        if not route.forwarded:  # the node that answers the client records the call
            pool = self.pools.get(name)
            self.records.add(
                route.call_id,
                name,
                pool.digest if pool is not None else "",
                route.served_by,
                reason,
                status,
                elapsed,
                route.request_bytes,
                route.response_bytes,
            )

    def _read_headers(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[str, int, float | None, bool]:
        """Call id, Content-Length, deadline (seconds) and whether another node forwarded
        the call."""
        call_id = ""
        length = 0
        deadline_s = None
        forwarded = False
        for key, value in headers:
            if key == b"content-length":
                length = _content_length(value)
            elif key == b"x-call-id":
                call_id = value.decode("latin-1")
                if not _CALL_ID.fullmatch(call_id):
                    raise BadRequest("X-Call-Id: expected 1–64 characters from A–Z a–z 0–9 . _ : -")
            elif key == b"x-deadline-ms":
                deadline_s = _deadline_s(value)
            elif key == HOP_HEADER:
                forwarded = True
        return call_id, length, deadline_s, forwarded

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


class Route:
    """What the gateway knows of one call as it goes: its id, when it started, where it
    was served and why (the router's reason)."""

    __slots__ = (
        "call_id",
        "forwarded",
        "reason",
        "request_bytes",
        "response_bytes",
        "served_by",
        "started",
    )

    def __init__(self, call_id: str, started: float) -> None:
        self.call_id = call_id
        self.started = started
        self.served_by = "local"
        self.reason = ""
        self.forwarded = False  # another node took the call from the client (and records it)
        self.request_bytes = 0
        self.response_bytes = 0


class ClientGone(Exception):
    """The client disconnected before it sent the whole body."""


class Refused(Exception):
    """A forwarded call this node does not serve: answered with ``failure`` and an
    ``X-Edgefaas-Refused: reason`` header, which tells the sending node that the call did not
    run and may go elsewhere."""

    def __init__(self, failure: GatewayError | RuntimeFailure, reason: str) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.reason = reason


def _refused_if(forwarded: bool, error: GatewayError) -> Exception:
    return Refused(error, error.code) if forwarded else error


def check_target(scope: Scope, path: str, methods: tuple[str, ...] | None) -> None:
    """Refuse a call's path with dot segments, and a method its trigger does not take (a
    function's own path takes the methods of :data:`HTTP_METHODS`: not TRACE or CONNECT)."""
    if "/." in scope["path"]:
        _refuse_dot_segments(scope["path"])
    methods = HTTP_METHODS if methods is None else methods
    if scope["method"] not in methods:
        raise MethodNotAllowed(
            f"{path} accepts {', '.join(methods)}, not {scope['method']}", methods
        )


def _refuse_dot_segments(path: str) -> None:
    """A call's path may not step out of it: ``/function/a/../b`` would reach another
    function (or another route of a gateway it is forwarded to)."""
    if {".", ".."} & set(path.split("/")):
        raise BadRequest(f"{path[:200]}: a function's path may not contain . or .. segments")


def _raw_target(scope: Scope) -> bytes:
    """The request's path and query as the client sent them (what a forwarded call signs)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope["query_string"]
    return raw + b"?" + query if query else raw


def _deadline_s(value: bytes) -> float:
    if not (value.isdigit() and len(value) <= 7) or not 1 <= int(value) <= MAX_DEADLINE_MS:
        raise BadRequest(
            f"X-Deadline-Ms: expected a whole number of milliseconds from 1 to "
            f"{MAX_DEADLINE_MS}, got {value.decode('latin-1')[:20]!r}"
        )
    return int(value) / 1000


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
