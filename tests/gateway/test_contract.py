"""The HTTP contract: operations check their inputs before they run (and say what is wrong
and where), a path answers OPTIONS and 405 with one Allow, and the node's OpenAPI document
is valid OpenAPI 3.1 and describes every operation it routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import api_pages, contract, openapi
from gateway.app import OPERATIONS, _handlers
from gateway.contract import (
    FUNCTION_NAME,
    Inputs,
    Operation,
    QueryModel,
    Reply,
    RequestModel,
    Whole,
    operation,
)
from gateway.errors import Unauthorized


class Pair(RequestModel):
    left: Whole = Field(ge=0, le=10)
    right: str


class Single(RequestModel):
    only: bool


class Page(QueryModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 10


class Echoed(BaseModel):
    path: dict[str, str]
    query: Any
    body: Any


def _echo(request: Request, inputs: Inputs) -> Response:
    body = inputs.body.model_dump() if isinstance(inputs.body, BaseModel) else inputs.body
    query = inputs.query.model_dump() if inputs.query is not None else None
    return JSONResponse({"path": inputs.path, "query": query, "body": body})


@operation("GET", "/things/{name}", "Read", params={"name": FUNCTION_NAME}, query=Page)
async def read(request: Request, inputs: Inputs) -> Response:
    return _echo(request, inputs)


@operation("POST", "/things/{name}", "Write", params={"name": FUNCTION_NAME}, body=Pair | Single)
async def write(request: Request, inputs: Inputs) -> Response:
    return _echo(request, inputs)


@operation("PUT", "/blobs", "Upload", body="binary", max_body_bytes=16)
async def upload(request: Request, inputs: Inputs) -> Response:
    return JSONResponse({"size": len(inputs.body)})


@operation("GET", "/secret", "Guarded", replies={200: Reply("Yes.", Echoed)})
async def secret(request: Request, inputs: Inputs) -> Response:
    return _echo(request, inputs)


TEST_OPERATIONS: list[Operation] = [read, write, upload, secret]


async def guard(request: Request, op: Operation) -> None:
    if op.auth == "admin" and request.headers.get("authorization") != "Bearer right":
        raise Unauthorized("admin route: send 'Authorization: Bearer <token>'")


pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=contract.routes(TEST_OPERATIONS, guard), exception_handlers=_handlers())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as test_client:
        yield test_client


ADMIN = {"Authorization": "Bearer right"}


def error_of(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message


async def test_a_checked_request_reaches_its_handler(client: httpx.AsyncClient) -> None:
    answer = await client.get("/things/echo?limit=5", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"path": {"name": "echo"}, "query": {"limit": 5}, "body": None}
    answer = await client.post("/things/echo", json={"left": 3.0, "right": "r"}, headers=ADMIN)
    assert answer.json()["body"] == {"left": 3, "right": "r"}  # 3.0 is the integer 3
    answer = await client.post("/things/echo", json={"only": True}, headers=ADMIN)
    assert answer.json()["body"] == {"only": True}  # the other member of the union


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "message"),
    [
        ("GET", "/things/Bad", {}, 400, "path.name: \"Bad\" is not a function name"),
        ("GET", "/things/echo?limit=0", {}, 400, "?limit: input should be greater than"),
        ("GET", "/things/echo?limit=x", {}, 400, '?limit: input should be a valid integer'),
        ("GET", "/things/echo?other=1", {}, 400, "?other: unknown"),
        ("GET", "/things/echo?limit=1&limit=2", {}, 400, "?limit: given more than once"),
        ("POST", "/things/echo", {"json": {"left": "3", "right": "r"}}, 400, "body.left: "),
        ("POST", "/things/echo", {"json": {"left": True, "right": "r"}}, 400, "body.left: "),
        ("POST", "/things/echo", {"json": {"left": 11, "right": "r"}}, 400, "body.left: input"),
        ("POST", "/things/echo", {"json": {"left": 1}}, 400, "body.right: required"),
        ("POST", "/things/echo", {"json": {"left": 1, "right": "r", "x": 1}}, 400,
         "body.x: unknown"),
        ("POST", "/things/echo", {"json": [1]}, 400, "body: expected a JSON object"),
        ("POST", "/things/echo", {"content": b"{"}, 400, "body: not valid JSON"),
        ("POST", "/things/echo", {"content": b"{}", "headers": {"content-type": "text/csv"}},
         415, "Content-Type: expected application/json, got 'text/csv'"),
        ("PUT", "/blobs", {"content": b"x" * 17}, 413, "exceeds the 16-byte limit"),
    ],
)  # fmt: skip
async def test_bad_inputs_are_refused_naming_what_and_where(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    kwargs: dict[str, Any],
    status: int,
    message: str,
) -> None:
    headers = {**ADMIN, **kwargs.pop("headers", {})}
    answer = await client.request(method, url, headers=headers, **kwargs)
    assert answer.status_code == status, answer.text
    assert message in error_of(answer)


async def test_the_guard_runs_before_the_inputs_are_checked(client: httpx.AsyncClient) -> None:
    answer = await client.post("/things/Bad", json={"nonsense": 1})
    assert answer.status_code == 401  # not 400: nothing is said to a caller without a token


async def test_a_path_answers_options_and_405_with_every_method_it_has(
    client: httpx.AsyncClient,
) -> None:
    options = await client.options("/things/echo")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    refused = await client.patch("/things/echo", headers=ADMIN)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert refused.json()["error"]["code"] == "method_not_allowed"
    assert (await client.head("/things/echo", headers=ADMIN)).status_code == 200  # HEAD is GET's


def test_the_document_describes_operations_with_their_schemas_and_errors() -> None:
    document = openapi.document(TEST_OPERATIONS)
    validate(document)  # OpenAPI 3.1
    post = document["paths"]["/things/{name}"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/Pair"} in schema["anyOf"]
    pair = document["components"]["schemas"]["Pair"]
    assert pair["properties"]["left"] == {
        "maximum": 10,
        "minimum": 0,
        "title": "Left",
        "type": "integer",
    }
    assert pair["additionalProperties"] is False
    assert set(post["responses"]) >= {"400", "401", "403", "413", "415", "429"}
    assert post["security"] == [{"admin": []}]
    name = post["parameters"][0]
    assert name["in"] == "path" and name["schema"]["pattern"].startswith("^[a-z]")
    get = document["paths"]["/things/{name}"]["get"]
    assert get["parameters"][1]["name"] == "limit" and get["parameters"][1]["in"] == "query"


def test_the_node_s_document_is_valid_openapi_and_routes_nothing_undocumented() -> None:
    operations = [*OPERATIONS, *api_pages.OPERATIONS]
    document = openapi.document(operations)
    validate(document)
    for op in operations:
        assert op.method.lower() in document["paths"][op.path], (op.method, op.path)
    for path in ("/function/{name}", "/async-function/{name}/{rest}"):
        assert "post" in document["paths"][path]
    assert "trace" not in document["paths"]["/function/{name}"]
    assert "delete" in document["paths"]["/async-function/{name}"]  # cancel, not a call
    assert document["components"]["securitySchemes"]["admin"]["scheme"] == "bearer"
