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
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator
from starlette.types import Receive, Scope, Send

from gateway import admin
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

FUNCTION_PATHS = {
    "/function/{name}": {
        "summary": "Call a function synchronously",
        "description": "Any method. The body, headers and query reach the handler; its "
        "return value is the response.",
    },
    "/function/{name}/{rest}": {
        "summary": "Call a function with a sub-path (the handler sees /{rest})",
    },
    "/async-function/{name}": {
        "summary": "Call a function asynchronously: 202 and X-Call-Id at once",
        "description": "Optional X-Callback-Url (checked against --callback-allow), "
        "X-Call-Id (1-64 of A-Z a-z 0-9 _ -; the same id twice is one call) and "
        "X-Idempotency-Key (passed to the function; default: the call id).",
    },
}


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

    routes: list[BaseRoute] = [
        *admin.routes(),
        *mesh_api.routes(),
        *records_api.routes(),
        *job_routes.routes(),
    ]
    schema = SchemaGenerator(
        {"openapi": "3.0.0", "info": {"title": "edgefaas gateway", "version": "1"}}
    )

    async def openapi(request: Request) -> Response:
        document = schema.get_schema(routes)
        for path, doc in FUNCTION_PATHS.items():
            document.setdefault("paths", {})[path] = {"post": doc}
        return JSONResponse(document)

    routes.append(Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_handlers())
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
