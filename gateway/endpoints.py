"""What the node's HTTP endpoints share: the node behind a request, the admin guard, and
request bodies read within a limit — raw, or as a JSON object.

Route modules (:mod:`gateway.admin`, :mod:`gateway.mesh.api`, :mod:`gateway.records.api`,
:mod:`gateway.jobs.routes`) reach the node only through :func:`node_of`; the parts they call
never see it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import check_bearer
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.node import Node

MAX_ADMIN_BODY_BYTES = 64 * 1024
Endpoint = Callable[[Request], Awaitable[Response]]


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def admin(endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so that it answers only with the node's admin token."""

    async def guarded(request: Request) -> Response:
        check_bearer(request, node_of(request).admin_token)
        return await endpoint(request)

    guarded.__doc__ = endpoint.__doc__
    guarded.__name__ = endpoint.__name__
    return guarded


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes — from its
    Content-Length before anything is read, else while it streams in. ``what`` names it in
    the message ("bundle", "a batch")."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"{what} of {length} bytes exceeds the {limit}-byte limit")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object (at most ``MAX_ADMIN_BODY_BYTES``); an empty body is ``{}``
    when ``optional``. 400 with the reason otherwise."""
    raw = await request.body()
    if optional and not raw:
        return {}
    if len(raw) > MAX_ADMIN_BODY_BYTES:
        raise BadRequest(f"body: larger than {MAX_ADMIN_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest('body: expected a JSON object such as {"replicas": 2}')
    return body
