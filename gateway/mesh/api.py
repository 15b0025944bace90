"""The mesh's HTTP API: bundles (upload, and serving them to peers), deploying, removing and
rolling back functions, and the list of nodes.

=======  ====================================  ==============================================
verb     path                                  who
=======  ====================================  ==============================================
PUT      /system/bundles/{digest}              admin: upload a signed bundle
GET      /system/bundles/{digest}              admin or a peer (mesh key): the bundle's bytes
HEAD     /system/bundles/{digest}              admin or a peer: does this node hold it?
POST     /system/functions                     admin: ``{"name", "digest"}`` → desired state
DELETE   /system/functions/{name}              admin: remove from the desired state
POST     /system/functions/{name}/rollback     admin: ``{"to": version}`` (optional)
GET      /system/nodes                         admin: the live nodes of the mesh
=======  ====================================  ==============================================

Each route is an :class:`~gateway.contract.Operation`: the declaration checks requests and
writes ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from gateway.contract import (
    DIGEST,
    FUNCTION_NAME,
    Inputs,
    Operation,
    Param,
    Reply,
    RequestModel,
    integral,
    operation,
)
from gateway.endpoints import node_of
from gateway.errors import Conflict, Invalid, MeshUnavailable, NotFound, Unprocessable
from gateway.mesh.agent import MeshAgent
from registry.defaults import MAX_BUNDLE_BYTES
from registry.errors import BundleError, BundleRejected, MeshError, MeshNotFound
from registry.unpack import verify_bundle

SIGNATURE_HEADER = "x-bundle-signature"
KEY_HEADER = "x-bundle-key"
BUNDLE_HEADERS = {
    SIGNATURE_HEADER: Param("[A-Za-z0-9+/]{4,200}={0,2}", "a base64 Ed25519 signature"),
    KEY_HEADER: Param("[0-9a-f]{8,64}", "a signing key id (hex)"),
}


class Stored(BaseModel):
    digest: str
    stored: bool


class Deploy(RequestModel):
    """Make the bundle ``digest`` (uploaded to this node) function ``name``'s version."""

    name: Annotated[str, Field(pattern=f"^{FUNCTION_NAME.pattern}$")]
    digest: Annotated[str, Field(pattern=f"^{DIGEST.pattern}$")]


Version = Annotated[int, Field(ge=1), BeforeValidator(integral)]


class Rollback(RequestModel):
    """Deploy version ``to`` again (default: the version before the current one)."""

    to: Version | None = None


class Entry(BaseModel):
    name: str
    digest: str
    version: int


class Removed(BaseModel):
    name: str
    removed: bool


class Nodes(BaseModel):
    mesh: str
    nodes: list[dict[str, Any]]


def _agent(request: Request) -> MeshAgent:
    return node_of(request).mesh


async def _mesh_call(coro: Any) -> Any:
    """Await a Redis-backed operation, turning an unreachable Redis into a 503."""
    try:
        return await coro
    except RedisError as exc:
        raise MeshUnavailable(f"the mesh's Redis is unreachable: {exc}") from None
    except MeshNotFound as exc:
        raise NotFound(str(exc)) from None
    except MeshError as exc:
        raise Conflict(str(exc)) from None


@operation(
    "GET",
    "/system/bundles/{digest}",
    "A bundle this node holds, for a peer (mesh-key HMAC) or an admin (bearer token)",
    auth="admin_or_mesh",
    tag="mesh",
    params={"digest": DIGEST},
    replies={200: Reply("The bundle's bytes.", media="application/octet-stream",
                        headers=(SIGNATURE_HEADER, KEY_HEADER))},
    errors=(404,),
)  # fmt: skip
async def get_bundle(request: Request, inputs: Inputs) -> Response:
    agent = _agent(request)
    digest = inputs.path["digest"]
    if not agent.store.has(digest):
        raise NotFound(f"bundle {digest[:12]} is not held by node {agent.name}")
    meta = agent.store.meta(digest)
    return FileResponse(
        agent.store.path(digest),
        media_type="application/octet-stream",
        headers={SIGNATURE_HEADER: meta.signature, KEY_HEADER: meta.key_id},
    )


@operation(
    "PUT",
    "/system/bundles/{digest}",
    "Upload a signed bundle (verified before it is stored)",
    tag="mesh",
    params={"digest": DIGEST},
    headers=BUNDLE_HEADERS,
    body="binary",
    max_body_bytes=MAX_BUNDLE_BYTES,
    replies={200: Reply("Already held (and what was sent checks out).", Stored),
             201: Reply("Verified and stored.", Stored)},
    errors=(422, 503),
)  # fmt: skip
async def put_bundle(request: Request, inputs: Inputs) -> Response:
    agent = _agent(request)
    digest = inputs.path["digest"]
    signature, key_id = request.headers[SIGNATURE_HEADER], request.headers[KEY_HEADER]
    data: bytes = inputs.body
    held = agent.store.has(digest)
    try:
        if held:  # still check what the uploader sent: it must learn if its bytes are bad
            await asyncio.to_thread(verify_bundle, data, digest, signature, key_id, agent.trusted)
        else:
            await asyncio.to_thread(agent.store.put, data, digest, signature, key_id)
    except (BundleRejected, BundleError) as exc:
        raise Unprocessable(str(exc)) from None
    await _mesh_call(agent.desired_state().add_holder(digest, agent.name))
    return JSONResponse({"digest": digest, "stored": not held}, status_code=200 if held else 201)


@operation(
    "POST",
    "/system/functions",
    "Make a held bundle the mesh's desired version of its function",
    description="The bundle must have been uploaded to this node (PUT /system/bundles/…).",
    tag="mesh",
    body=Deploy,
    replies={200: Reply("The desired entry.", Entry)},
    errors=(404, 409, 422, 503),
)
async def deploy_function(request: Request, inputs: Inputs) -> Response:
    agent = _agent(request)
    name, digest = inputs.body.name, inputs.body.digest
    if not agent.store.has(digest):
        raise NotFound(
            f"bundle {digest[:12]} is not held by node {agent.name}: upload it first "
            f"(PUT /system/bundles/{digest})"
        )
    try:
        spec = await asyncio.to_thread(agent.store.unpack, digest)
    except (BundleRejected, BundleError) as exc:
        raise Unprocessable(str(exc)) from None
    if spec.name != name:
        raise Invalid(f"body.name: bundle {digest[:12]} holds function {spec.name!r}")
    meta = agent.store.meta(digest)
    triggers = [t.path for t in spec.triggers]
    entry = await _mesh_call(
        agent.desired_state().assign(name, digest, meta.signature, meta.key_id, triggers)
    )
    return JSONResponse({"name": entry.name, "digest": entry.digest, "version": entry.version})


@operation(
    "DELETE",
    "/system/functions/{name}",
    "Remove a function from the mesh (its history is kept for rollback)",
    tag="mesh",
    params={"name": FUNCTION_NAME},
    replies={200: Reply("Removed.", Removed)},
    errors=(404, 503),
)
async def remove_function(request: Request, inputs: Inputs) -> Response:
    name = inputs.path["name"]
    if not await _mesh_call(_agent(request).desired_state().remove(name)):
        raise NotFound(f"function {name!r} is not deployed to this mesh")
    return JSONResponse({"name": name, "removed": True})


@operation(
    "POST",
    "/system/functions/{name}/rollback",
    "Deploy an earlier version again",
    description='Body {"to": version}, optional: by default the version before the current one.',
    tag="mesh",
    params={"name": FUNCTION_NAME},
    body=Rollback,
    body_optional=True,
    replies={200: Reply("The new desired entry.", Entry)},
    errors=(404, 409, 503),
)
async def rollback_function(request: Request, inputs: Inputs) -> Response:
    target = inputs.body.to if inputs.body is not None else None
    entry = await _mesh_call(_agent(request).desired_state().rollback(inputs.path["name"], target))
    return JSONResponse({"name": entry.name, "digest": entry.digest, "version": entry.version})


@operation(
    "GET",
    "/system/nodes",
    "The live nodes of the mesh, their functions, digests, load and sandboxes",
    tag="mesh",
    replies={200: Reply("Nodes; when Redis is unreachable, only this node, marked degraded.",
                        Nodes)},
)  # fmt: skip
async def list_nodes(request: Request, inputs: Inputs) -> Response:
    node = node_of(request)
    try:
        records = await node.mesh.live_nodes()
        return JSONResponse({"mesh": "ok", "nodes": records})
    except RedisError as exc:
        return JSONResponse({"mesh": f"unreachable: {exc}", "nodes": [node.record()]})


OPERATIONS: list[Operation] = [
    get_bundle,
    put_bundle,
    deploy_function,
    remove_function,
    rollback_function,
    list_nodes,
]
