"""``/async-function/{name}[/{rest}]`` and trigger paths declared ``async: true``: the call
is checked (function, size, callback URL, ids), stored as an RQ job in one Redis round
trip, and answered 202 with ``X-Call-Id`` — the job's id — before any worker sees it.

The job keeps the caller's headers (without the mesh's own ``X-Edgefaas-*`` ones) plus
``X-Call-Id`` and ``X-Idempotency-Key`` (the caller's, or the call id): a function whose
effects must not repeat when a run is retried or redelivered keys them on it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from gateway.errors import (
    BadRequest,
    Conflict,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    error_response,
    internal_error_response,
)
from gateway.invoke import ClientGone, check_target
from gateway.jobs.callbacks import MAX_URL_CHARS
from gateway.jobs.intake import NewCall
from gateway.jobs.layout import shown_status
from runtime.errors import Headers, Unavailable
from runtime.event import build_header_block

if TYPE_CHECKING:
    from gateway.invoke import Invoker
    from gateway.jobs.service import AsyncCalls

log = logging.getLogger("edgefaas.jobs")

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what RQ allows in a job id
MAX_KEY_CHARS = 256
_NOT_KEPT = (b"x-call-id", b"x-idempotency-key", b"x-callback-url", b"host")


class Acceptor:
    """Accepts asynchronous calls for the node's :class:`AsyncCalls`; reuses the sync
    path's :class:`~gateway.invoke.Invoker` to read headers and bodies the same way."""

    def __init__(self, calls: AsyncCalls, invoker: Invoker) -> None:
        self.calls = calls
        self.invoker = invoker
        self.pools = invoker.pools

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        path: str,
        methods: tuple[str, ...] | None = None,
    ) -> None:
        try:
            status, headers, body = await self._accept(scope, receive, name, path, methods)
        except (GatewayError, Unavailable) as exc:
            status, headers, body = error_response(exc)
        except ClientGone:
            return
        except Exception:
            log.exception("accepting an async call to %s failed", name)
            status, headers, body = internal_error_response()
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _accept(
        self,
        scope: Scope,
        receive: Receive,
        name: str,
        path: str,
        methods: tuple[str, ...] | None,
    ) -> tuple[int, Headers, bytes]:
        check_target(scope, path, methods)
        pool = self.pools.get(name)
        if pool is None:
            raise NotFound(f"no function named {name!r} here")
        given, length, _, _ = self.invoker._read_headers(scope["headers"])
        if given and not JOB_ID.fullmatch(given):
            raise BadRequest("X-Call-Id: an async call's id takes 1–64 of A–Z a–z 0–9 _ -")
        callback, key, kept = _split_headers(scope["headers"])
        if callback:
            refused = await self.calls.policy.check(callback)
            if refused is not None:
                raise BadRequest(f"X-Callback-Url: {refused}")
        if length > self.invoker.max_body:
            raise PayloadTooLarge(self.invoker._too_large(length))
        body = await self.invoker._read_body(receive)
        job_id = given or uuid.uuid4().hex
        idempotency_key = key or job_id
        kept += [(b"x-call-id", job_id.encode()), (b"x-idempotency-key", idempotency_key.encode())]
        call = NewCall(
            job_id=job_id,
            function=name,
            method=scope["method"].encode(),
            path=path.encode(),
            query=scope["query_string"],
            headers=build_header_block(kept),
            body=body,
            callback_url=callback,
            idempotency_key=idempotency_key,
            retries=pool.spec.async_policy.retries,
            timeout_s=pool.spec.timeout_s,
            lane=self.calls.accept_lane(pool),
        )
        try:
            existing = await self.calls.store.accept(call)
        except (RedisError, OSError) as exc:
            raise Unavailable(
                f"async calls are kept in the mesh's Redis, which is unreachable ({exc}); "
                "try again, or call /function/ synchronously"
            ) from None
        if existing == "conflict":
            raise Conflict(f"X-Call-Id: {job_id} is the id of another function's call")
        if existing is None and pool.scaled_to_zero():  # this node forks for its own calls
            pool.grow()
        answer = {"call_id": job_id, "function": name, "status": "queued"}
        if existing is not None:  # the same id twice: one job
            answer["status"] = shown_status(existing)
            answer["duplicate"] = True  # type: ignore[assignment]
        headers: Headers = [
            (b"content-type", b"application/json"),
            (b"x-call-id", job_id.encode()),
            (b"location", f"/system/calls/{job_id}".encode()),
        ]
        return 202, headers, json.dumps(answer).encode()


def _split_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[str, str, list[tuple[bytes, bytes]]]:
    """The callback URL, the idempotency key, and the headers the job keeps."""
    callback = key = ""
    kept = []
    for name, value in headers:
        if name == b"x-callback-url":
            callback = value.decode("latin-1").strip()
            if len(callback) > MAX_URL_CHARS:
                raise BadRequest(f"X-Callback-Url: longer than {MAX_URL_CHARS} characters")
        elif name == b"x-idempotency-key":
            key = value.decode("latin-1").strip()
            if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
                raise BadRequest(
                    f"X-Idempotency-Key: expected 1–{MAX_KEY_CHARS} printable characters"
                )
        elif not name.startswith(b"x-edgefaas-") and name not in _NOT_KEPT:
            kept.append((name, value))
    return callback, key, kept
