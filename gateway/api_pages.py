"""The API's own pages: ``/openapi.json`` (the document, written once per node from the
operations' declarations) and ``/docs``, a human view of it — a static page and a small
script committed in ``gateway/static/`` (no CDN, no build step; the page's Content Security
Policy allows no inline script)."""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.contract import Inputs, Operation, Reply, operation

STATIC = files("gateway") / "static"
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'"


@operation(
    "GET",
    "/openapi.json",
    "This document: the node's API in OpenAPI 3.1",
    auth="none",
    tag="docs",
    replies={200: Reply("The OpenAPI document.", media="application/json")},
)
async def openapi_document(request: Request, inputs: Inputs) -> Response:
    return JSONResponse(request.app.state.openapi)


def _static(name: str, media: str) -> Response:
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
    return Response((STATIC / name).read_bytes(), media_type=media, headers=headers)


@operation(
    "GET",
    "/docs",
    "The API's documentation, for a browser",
    auth="none",
    tag="docs",
    replies={200: Reply("A page that shows /openapi.json.", media="text/html")},
)
async def docs_page(request: Request, inputs: Inputs) -> Response:
    return _static("api.html", "text/html; charset=utf-8")


@operation(
    "GET",
    "/docs/api.js",
    "The script of the documentation page",
    auth="none",
    tag="docs",
    replies={200: Reply("JavaScript.", media="text/javascript")},
)
async def docs_script(request: Request, inputs: Inputs) -> Response:
    return _static("api.js", "text/javascript; charset=utf-8")


@operation(
    "GET",
    "/docs/api.css",
    "The style of the documentation page",
    auth="none",
    tag="docs",
    replies={200: Reply("CSS.", media="text/css")},
)
async def docs_style(request: Request, inputs: Inputs) -> Response:
    return _static("api.css", "text/css; charset=utf-8")


OPERATIONS: list[Operation] = [openapi_document, docs_page, docs_script, docs_style]
