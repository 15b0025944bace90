"""What the node's HTTP endpoints share: the node behind a request, and the guard every
operation passes before its inputs are checked — the admin token (with the failed-login
limit), or the mesh's signature, by the operation's ``auth``.

Route modules (:mod:`gateway.admin`, :mod:`gateway.mesh.api`, :mod:`gateway.records.api`,
:mod:`gateway.jobs.routes`) reach the node only through :func:`node_of`; the parts they call
never see it.
"""

from __future__ import annotations

from starlette.requests import Request

from gateway.contract import Operation, read_limited
from gateway.errors import Unauthorized
from gateway.node import Node
from registry.errors import MeshAuthError
from registry.meshauth import verify_request


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def guard(request: Request, op: Operation) -> None:
    """Let the request through to ``op`` or raise 401/403/429. A mesh signature covers the
    body: it is read here (within the operation's limit) and kept for the body check."""
    node = node_of(request)
    if op.auth == "admin" or (op.auth == "admin_or_mesh" and "authorization" in request.headers):
        node.logins.check(request, node.admin_token)
    elif op.auth in ("mesh", "admin_or_mesh"):
        body = b""
        if op.body is not None:
            body = await read_limited(request, op.max_body_bytes, "the body")
            request.state.raw_body = body
        try:
            request.state.mesh_sender = verify_request(
                node.mesh.mesh_key,
                request.method,
                request.url.path,
                request.headers,
                node.name,
                body=body if op.body is not None else None,
            )
        except MeshAuthError as exc:
            raise Unauthorized(f"{request.method} {request.url.path}: {exc}") from None
