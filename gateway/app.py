"""The gateway's ASGI app, composed from a routes list, exception handlers and a lifespan
that opens the node (its pools) and closes it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from gateway import admin, api_pages, contract, openapi
from gateway.endpoints import guard
from gateway.errors import error_response, internal_error_response
from gateway.invoke import Invoker
from gateway.jobs import routes as job_routes
from gateway.jobs.accept import Acceptor
from gateway.mesh import api as mesh_api
from gateway.node import Node
from gateway.records import api as records_api
from runtime.errors import StatusError
from runtime.responses import error_body

log = logging.getLogger("edgefaas.gateway")

# Every operation of the node's own routes (the function paths are the Gateway's).
OPERATIONS = [
    *admin.OPERATIONS,
    *mesh_api.OPERATIONS,
    *records_api.OPERATIONS,
    *job_routes.OPERATIONS,
]


class Gateway:
    """The front door. Function calls — ``/function/{name}[/{rest}]`` and the manifest's
    trigger paths — go straight to the :class:`Invoker`: they are the hot path, and
    Starlette's routing and middleware would cost them about a tenth of the node's
    throughput. Everything else (admin API, probes, lifespan) goes to the Starlette app."""

    def __init__(self, node: Node, app: Starlette) -> None:
        self.app = app
        self.invoke = Invoker(
            node.name,
            node.supervisor.pools,
            node.router,
            node.recorder.buffer,
            node.call_ids,
            metrics=node.metrics,
            call_log=node.call_log,
            max_body_bytes=node.settings.max_body_bytes,
        )
        self.accept = Acceptor(node.async_calls, self.invoke)
        self.triggers = node.supervisor.triggers  # updated in place as versions switch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/function/"):
                name, _, rest = path[10:].partition("/")
                if name:
                    await self.invoke(scope, receive, send, name, "/" + rest)
                    return
            elif path.startswith("/async-function/") and scope["method"] != "DELETE":
                name, _, rest = path[16:].partition("/")
                if name:
                    await self.accept(scope, receive, send, name, "/" + rest)
                    return
            trigger = self.triggers.get(path)
            if trigger is not None:
                serve = self.accept if trigger[2] else self.invoke
                await serve(scope, receive, send, trigger[0], path, trigger[1])
                return
        await self.app(scope, receive, send)


def create_app(node: Node) -> Gateway:
    """The node's ASGI app; ``app.app.state.node`` is the node."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.close()

    operations = [*OPERATIONS, *api_pages.OPERATIONS]
    routes: list[BaseRoute] = [*contract.routes(operations, guard)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_handlers())
    app.state.openapi = openapi.document(operations)
    app.state.node = node
    return Gateway(node, app)


def _handlers() -> dict[Any, Any]:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StatusError):
            raise exc
        status, headers, body = error_response(exc)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return Response(
            error_body(code, message),
            exc.status_code,
            headers=dict(exc.headers or {}),
            media_type="application/json",
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        status, _, body = internal_error_response()
        return Response(body, status, media_type="application/json")

    return {
        StatusError: on_gateway_error,
        HTTPException: on_http_exception,
        Exception: on_unexpected,
    }
