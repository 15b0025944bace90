"""The baseline: a plain Starlette app on uvicorn that calls the same function in-process.

Run as ``python -m bench.baseline PORT HANDLER_FILE``. The handler gets the same ``Event``
and its return value is rendered by the same code as in a worker, so the only difference
from a node is the worker pool itself.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.event import Event, build_header_block
from runtime.responses import render


def load_handler(path: str) -> Callable[[Any], Any]:
    spec = importlib.util.spec_from_file_location("bench_function", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handle: Callable[[Any], Any] = module.handle
    return handle


def create_app(handle: Callable[[Any], Any]) -> Starlette:
    async def call(request: Request) -> Response:
        event = Event(
            request.method,
            "/",
            request.scope["query_string"],
            build_header_block(request.scope["headers"]),
            await request.body(),
        )
        status, headers, body = render(handle(event))
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

    return Starlette(routes=[Route("/function/echo", call, methods=["GET", "POST"])])


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        create_app(load_handler(path)),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
