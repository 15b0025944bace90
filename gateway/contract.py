"""The node's own HTTP routes, declared once: each endpoint is an :class:`Operation` — its
method and path, who may call it, its path and query parameters, its request body and its
responses, with pydantic models for the JSON ones. That one declaration both checks every
request before the endpoint runs (a bad one gets 400, 413 or 415 naming the field) and writes
``/openapi.json`` (:mod:`gateway.openapi`).

Routes are grouped by path (:class:`PathRoute`), so that a path served by several modules
answers ``OPTIONS`` and 405 with one ``Allow`` that lists every method it has.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import BadRequest, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType

Auth = Literal["none", "admin", "mesh", "admin_or_mesh"]
Body = Any  # a RequestModel, a union of them (``A | B``: the one whose keys fit), "binary"
Handler = Callable[[Request, "Inputs"], Awaitable[Response]]
MAX_JSON_BODY_BYTES = 64 * 1024


def integral(value: object) -> object:
    """JSON has one kind of number: ``3.0`` is the integer 3 (as JSON Schema says)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer of a JSON body: 3 or 3.0, never "3" or true. Bounds go in the field's
# Field(ge=, le=), or in an Annotated before the validator (pydantic writes them into the
# schema as minimum/maximum only there).
Whole = Annotated[int, BeforeValidator(integral)]


class RequestModel(BaseModel):
    """A JSON request body: unknown keys are refused, and values are not converted (a
    string is no number, ``true`` no integer), as the published schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)


class QueryModel(BaseModel):
    """Query parameters: text converted to the declared types; unknown ones are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Param:
    """A path parameter: its JSON schema (a string with a ``pattern``) and what it names."""

    pattern: str
    description: str
    max_length: int = 200

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^{self.pattern}$", "maxLength": self.max_length}


FUNCTION_NAME = Param(
    "[a-z][a-z0-9_-]{0,62}",
    "a function name (lower case letters, digits, _ and -, starting with a letter, ≤ 63)",
)
DIGEST = Param("[0-9a-f]{64}", "a sha256 digest (64 lowercase hex digits)")
CALL_ID = Param("[A-Za-z0-9_-]{1,64}", "a call id (1–64 of A–Z a–z 0–9 _ -)")
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """One response: its description, its body (a pydantic model for JSON; ``media`` for
    another type) and the names of the headers it carries (see :data:`HEADERS`)."""

    description: str
    model: Any = None
    media: str = "application/json"
    headers: tuple[str, ...] = ()


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    handler: Handler
    auth: Auth = "admin"
    description: str = ""
    tag: str = "admin"
    params: dict[str, Param] = field(default_factory=dict)
    headers: dict[str, Param] = field(default_factory=dict)  # required request headers
    query: type[QueryModel] | None = None
    body: Body = None
    body_optional: bool = False
    raw_body: bool = False  # the handler checks the (JSON) body itself, after the signature
    max_body_bytes: int = MAX_JSON_BODY_BYTES
    replies: dict[int, Reply] = field(default_factory=dict)
    errors: tuple[int, ...] = ()  # error statuses the handler itself may answer

    @property
    def operation_id(self) -> str:
        return getattr(self.handler, "__name__", "operation")

    def statuses(self) -> dict[int, str]:
        """Every error status this operation can answer, with why."""
        found: dict[int, str] = {}
        if self.params or self.headers or self.query is not None or self.body is not None:
            found[400] = "A bad parameter or body; the message names it."
        if self.auth in ("admin", "admin_or_mesh"):
            found[401] = "No credentials, or credentials of the wrong form."
            found[403] = "A token that is not this node's."
            found[429] = "Too many failed logins from this address; Retry-After says when."
        if self.auth in ("mesh", "admin_or_mesh"):
            found[401] = "Not signed with this mesh's key (or the admin token is missing)."
        if self.body is not None:
            found[413] = "A body larger than the route's limit."
        if self.body is not None and self.body != "binary" and not self.raw_body:
            found[415] = "A Content-Type other than application/json."
        for status in self.errors:
            found.setdefault(status, ERROR_DESCRIPTIONS[status])
        return found


ERROR_DESCRIPTIONS = {
    400: "A bad request; the message says what is wrong and where.",
    404: "Not found here.",
    409: "In conflict with the mesh's state.",
    413: "A body larger than the route's limit.",
    422: "Fits the schema but not a rule it cannot say, or a bundle that fails verification.",
    503: "The mesh's Redis is unreachable, or the function cannot serve now.",
}


@dataclass
class Inputs:
    """A request's checked inputs: path parameters, the query model, the body (a model, the
    raw bytes of a binary body, or None when an optional body was empty)."""

    path: dict[str, str]
    query: Any = None
    body: Any = None


def operation(
    method: str, path: str, summary: str, **options: Any
) -> Callable[[Handler], Operation]:
    """Declare an endpoint: ``@operation("POST", "/system/x/{name}", "Do x", body=XBody)``."""

    def declare(handler: Handler) -> Operation:
        return Operation(method, path, summary, handler, **options)

    return declare


# ---------------------------------------------------------------------- checking requests


def _check_params(op: Operation, values: dict[str, Any]) -> dict[str, str]:
    for name, param in op.params.items():
        value = str(values.get(name, ""))
        if len(value) > param.max_length or not re.fullmatch(param.pattern, value):
            shown = json.dumps(value[:60])
            raise BadRequest(f"path.{name}: {shown} is not {param.description}")
    return {name: str(values[name]) for name in op.params}


def _check_headers(op: Operation, request: Request) -> None:
    for name, param in op.headers.items():
        value = request.headers.get(name, "")
        if not value:
            raise BadRequest(f"header {name}: required")
        if len(value) > param.max_length or not re.fullmatch(param.pattern, value):
            raise BadRequest(f"header {name}: {json.dumps(value[:60])} is not {param.description}")


def _check_query(op: Operation, request: Request) -> Any:
    params = request.query_params
    if op.query is None:
        if params:
            raise BadRequest(f"?{next(iter(params))}: this route takes no query parameters")
        return None
    repeated = [key for key in params if len(params.getlist(key)) > 1]
    if repeated:
        raise BadRequest(f"?{repeated[0]}: given more than once")
    try:
        return op.query.model_validate(dict(params))
    except ValidationError as exc:
        raise BadRequest(_first_error(exc, "?")) from None


async def _check_body(op: Operation, request: Request) -> Any:
    if op.body is None:
        return None
    raw = getattr(request.state, "raw_body", None)  # read by the guard (mesh signatures)
    if raw is None:
        raw = await read_limited(request, op.max_body_bytes, "the body")
    if op.body == "binary" or op.raw_body:
        return raw
    if not raw and op.body_optional:
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type: expected application/json, got {media!r} (with curl: "
            "-H 'Content-Type: application/json')"
        )
    try:
        document = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BadRequest("body: expected a JSON object")
    model = _member_for(op.body, document)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise BadRequest(_first_error(exc, "body.") + _shapes(op.body)) from None


def _shapes(body: Any) -> str:
    """For a union body, the shapes it takes: ``(the body takes {replicas} or {min, max})``."""
    members = typing.get_args(body)
    if not members:
        return ""
    shapes = [
        "{" + ", ".join(n for n, f in m.model_fields.items() if f.is_required()) + "}"
        for m in members
    ]
    return f" (the body takes {' or '.join(shapes)})"


def _member_for(body: Any, document: dict[str, Any]) -> type[BaseModel]:
    """The model a body is checked against: ``body`` itself, or — for a union ``A | B`` —
    the member that knows most of the document's keys (its errors are the useful ones)."""
    members = typing.get_args(body)
    if not members:
        return typing.cast(type[BaseModel], body)
    best: type[BaseModel] = max(
        members, key=lambda model: len(set(document) & set(model.model_fields))
    )
    return best


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


def _first_error(exc: ValidationError, prefix: str) -> str:
    """The most useful error first: an unknown key, then the rest in pydantic's order."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = ".".join(str(part) for part in error["loc"]) or "(the whole)"
    got = error.get("input")
    if error["type"] == "missing":
        return f"{prefix}{where}: required"
    if error["type"] == "extra_forbidden":
        return f"{prefix}{where}: unknown"
    shown = json.dumps(got)[:60] if _plain(got) else type(got).__name__
    return f"{prefix}{where}: {error['msg'].lower()}, got {shown}"


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# ---------------------------------------------------------------------- routing


Guard = Callable[[Request, Operation], Awaitable[None]]


class PathRoute(Route):
    """Every operation of one path: dispatches by method (HEAD is served as GET), answers
    OPTIONS with 204 and ``Allow``, any other method with 405 and the same ``Allow``."""

    def __init__(self, path: str, operations: Sequence[Operation], guard: Guard) -> None:
        self.operations = {op.method: op for op in operations}
        self.guard = guard
        super().__init__(path, self._dispatch)
        self.methods = None  # every method reaches _dispatch, which answers for the path

    @property
    def allowed(self) -> tuple[str, ...]:
        methods = set(self.operations)
        if "GET" in methods:
            methods.add("HEAD")
        return tuple(sorted(methods | {"OPTIONS"}))

    async def _dispatch(self, request: Request) -> Response:
        method = request.method
        op = self.operations.get("GET" if method == "HEAD" else method)
        if op is None:
            if method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": ", ".join(self.allowed)})
            raise MethodNotAllowed(
                f"{method} {request.url.path}: this path takes {', '.join(self.allowed)}",
                self.allowed,
            )
        await self.guard(request, op)
        _check_headers(op, request)
        inputs = Inputs(_check_params(op, request.path_params), _check_query(op, request))
        inputs.body = await _check_body(op, request)
        return await op.handler(request, inputs)


def routes(operations: Iterable[Operation], guard: Guard) -> list[PathRoute]:
    """One :class:`PathRoute` per path, in the order paths first appear."""
    by_path: dict[str, list[Operation]] = {}
    for op in operations:
        by_path.setdefault(op.path, []).append(op)
    return [PathRoute(path, ops, guard) for path, ops in by_path.items()]
