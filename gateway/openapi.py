"""``/openapi.json``: the OpenAPI 3.1 document of a node, written from the same
:class:`~gateway.contract.Operation` declarations that check its requests, plus the function
paths (``/function/{name}``, ``/async-function/{name}``), which pass any body through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter

from gateway.contract import FUNCTION_NAME, Operation, Param
from registry.defaults import HTTP_METHODS

VERSION = "1"
REF = "#/components/schemas/{model}"
CALL_HEADERS = {  # headers every answer to a function call carries
    "X-Call-Id": "The call's id (the request's X-Call-Id, or one the node made).",
    "X-Served-By": "Where the call ran: local, peer:NODE, cloud or cloud:NODE.",
    "X-Duration-Seconds": "How long the call took in the gateway, in seconds.",
}
HEADERS = {  # response headers operations name in their replies
    "x-bundle-signature": "The bundle's base64 Ed25519 signature of its digest.",
    "x-bundle-key": "The id of the key that signed it.",
    "Retry-After": "Seconds to wait before trying again.",
    "WWW-Authenticate": 'Bearer realm="edgefaas"',
    "Location": "Where the call's status is: /system/calls/ID.",
    **CALL_HEADERS,
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error the node answers: what went wrong and where, for the caller."""

    error: ErrorDetail


class Accepted(BaseModel):
    call_id: str
    status: str
    function: str


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The whole document for these operations and the function paths."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    for path, item in _function_paths(schemas).items():
        for method, entry in item.items():
            paths.setdefault(path, {}).setdefault(method, entry)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgefaas node",
            "version": VERSION,
            "description": "A node's own HTTP API: function calls, sync and async, the admin "
            "API (bearer token), the mesh's routes (signed with the mesh key) and probes. "
            'Errors are JSON {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


SECURITY_SCHEMES = {
    "admin": {
        "type": "http",
        "scheme": "bearer",
        "description": "The node's admin token (EDGEFAAS_ADMIN_TOKEN, or DATA_DIR/admin-token).",
    },
    "mesh": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Edgefaas-Auth",
        "description": "HMAC-SHA256 with the mesh key over method, path, X-Edgefaas-Time, "
        "X-Edgefaas-Node and the receiving node's name (and X-Edgefaas-Nonce and the body's "
        "sha256, for calls and record batches); see registry/meshauth.py.",
    },
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "none": [],
    "admin": [{"admin": []}],
    "mesh": [{"mesh": []}],
    "admin_or_mesh": [{"admin": []}, {"mesh": []}],
}


def _schema(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema for ``model``, its named parts moved to ``components.schemas``."""
    found = TypeAdapter(model).json_schema(ref_template=REF, mode="serialization")
    schemas.update(found.pop("$defs", {}))
    if isinstance(model, type) and issubclass(model, BaseModel) and "properties" in found:
        schemas[model.__name__] = found
        return {"$ref": REF.format(model=model.__name__)}
    return found


def _request_schema(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    found = TypeAdapter(model).json_schema(ref_template=REF, mode="validation")
    schemas.update(found.pop("$defs", {}))
    if isinstance(model, type) and issubclass(model, BaseModel):
        schemas[model.__name__] = found
        return {"$ref": REF.format(model=model.__name__)}
    return found


def _parameter(name: str, where: str, param: Param) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": True,
        "description": param.description,
        "schema": param.schema(),
    }


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "security": SECURITY[op.auth],
        "parameters": [
            *(_parameter(name, "path", p) for name, p in op.params.items()),
            *(_parameter(name, "header", p) for name, p in op.headers.items()),
            *_query_parameters(op, schemas),
        ],
        "responses": _responses(op, schemas),
    }
    if op.description:
        entry["description"] = op.description
    if op.body == "binary":
        binary = {"schema": {"type": "string", "format": "binary"}}
        entry["requestBody"] = {"required": True, "content": {"application/octet-stream": binary}}
    elif op.body is not None:
        entry["requestBody"] = {
            "required": not op.body_optional,
            "content": {"application/json": {"schema": _request_schema(op.body, schemas)}},
        }
    return entry


def _query_parameters(op: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    if op.query is None:
        return []
    found = op.query.model_json_schema(ref_template=REF)
    required = set(found.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": schema}
        for name, schema in found.get("properties", {}).items()
    ]


def _responses(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in op.replies.items():
        entry: dict[str, Any] = {"description": reply.description}
        if reply.model is not None:
            entry["content"] = {_media(reply.media): {"schema": _schema(reply.model, schemas)}}
        elif reply.media != "application/json":
            entry["content"] = {_media(reply.media): {"schema": {"type": "string"}}}
        if reply.headers:
            entry["headers"] = {name: _header(name) for name in reply.headers}
        responses[str(status)] = entry
    error = {"application/json": {"schema": _schema(ErrorBody, schemas)}}
    for status, why in sorted(op.statuses().items()):
        entry = {"description": why, "content": error}
        if status == 429:
            entry["headers"] = {"Retry-After": _header("Retry-After")}
        responses.setdefault(str(status), entry)
    return responses


def _media(media: str) -> str:
    return media.split(";", maxsplit=1)[0].strip()


def _header(name: str, required: bool = True) -> dict[str, Any]:
    return {"description": HEADERS[name], "required": required, "schema": {"type": "string"}}


def _function_paths(schemas: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The call paths: any method, any body, any answer of the function's."""
    error = {"application/json": {"schema": _schema(ErrorBody, schemas)}}
    accepted = {"application/json": {"schema": _schema(Accepted, schemas)}}
    name = _parameter("name", "path", FUNCTION_NAME)
    rest = {"name": "rest", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, dict[str, Any]] = {}
    for prefix, is_async in (("/function", False), ("/async-function", True)):
        for suffix, params in (("/{name}", [name]), ("/{name}/{rest}", [name, rest])):
            methods = [m for m in HTTP_METHODS if not (is_async and m == "DELETE")]
            paths[prefix + suffix] = {
                method.lower(): _call_operation(
                    method, prefix + suffix, params, is_async, error, accepted
                )
                for method in methods
            }
    return paths


def _call_operation(
    method: str,
    path: str,
    params: list[dict[str, Any]],
    is_async: bool,
    error: dict[str, Any],
    accepted: dict[str, Any],
) -> dict[str, Any]:
    words = "Queue a call of" if is_async else "Call"
    headers = {name: _header(name) for name in CALL_HEADERS}
    slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    entry: dict[str, Any] = {
        "operationId": f"{method.lower()}_{slug}",
        "summary": f"{words} the function (any method; the body, headers and query reach it)",
        "tags": ["calls"],
        "security": [],
        "parameters": params,
        "responses": _call_responses(is_async, error, accepted, headers),
    }
    if method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        body = {"schema": {"type": "string", "format": "binary"}}
        entry["requestBody"] = {
            "required": False,
            "description": "Passed through to the function as bytes, whatever its type.",
            "content": {"application/octet-stream": body},
        }
    return entry


def _call_responses(
    is_async: bool, error: dict[str, Any], accepted: dict[str, Any], headers: dict[str, Any]
) -> dict[str, Any]:
    if is_async:
        location = {**headers, "Location": _header("Location")}
        del location["X-Served-By"], location["X-Duration-Seconds"]
        ok: dict[str, Any] = {
            "202": {"description": "Accepted: queued.", "headers": location, "content": accepted}
        }
    else:
        ok = {
            "default": {
                "description": "The function's answer, whatever its status and type.",
                "headers": headers,
                "content": {"*/*": {"schema": {}}},
            }
        }
    errors = {
        "400": "A bad X-Call-Id, X-Deadline-Ms or X-Callback-Url.",
        "404": "No such function here.",
        "405": "The trigger path does not take this method.",
        "409": "The call id is another function's (async).",
        "413": "A body over the node's limit.",
        "429": "Every worker, queue, peer and the cloud are busy; Retry-After says when.",
        "503": "The function cannot start, or the mesh's Redis is unreachable (async).",
    }
    if not is_async:
        errors |= {"502": "The worker died during the call.", "504": "The call timed out."}
    for status, why in errors.items():
        entry: dict[str, Any] = {"description": why, "content": error}
        if status == "429":
            entry["headers"] = {"Retry-After": _header("Retry-After")}
        ok[status] = entry
    return ok
