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
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.auth import check_bearer
from gateway.endpoints import admin, json_object, node_of, read_limited
from gateway.errors import (
    BadRequest,
    Conflict,
    MeshUnavailable,
    NotFound,
    Unauthorized,
    Unprocessable,
)
from gateway.mesh.agent import MeshAgent
from registry.defaults import MAX_BUNDLE_BYTES
from registry.errors import (
    BundleError,
    BundleRejected,
    MeshAuthError,
    MeshError,
    MeshNotFound,
)
from registry.meshauth import verify_request
from registry.store import check_digest
from registry.unpack import verify_bundle

SIGNATURE_HEADER = "x-bundle-signature"
KEY_HEADER = "x-bundle-key"


def _agent(request: Request) -> MeshAgent:
    return node_of(request).mesh


def _digest(request: Request) -> str:
    try:
        return check_digest(request.path_params["digest"])
    except BundleRejected as exc:
        raise BadRequest(str(exc)) from None


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


async def get_bundle(request: Request) -> Response:
    """
    summary: A bundle this node holds, for a peer (mesh-key HMAC) or an admin
    responses:
      200: {description: "The bundle's bytes; X-Bundle-Signature and X-Bundle-Key headers."}
      401: {description: "Neither a valid mesh signature nor the admin token."}
      404: {description: "Not held here."}
    """
    agent = _agent(request)
    if "authorization" in request.headers:
        check_bearer(request, node_of(request).admin_token)
    else:
        try:
            verify_request(
                agent.mesh_key, request.method, request.url.path, request.headers, agent.name
            )
        except MeshAuthError as exc:
            raise Unauthorized(str(exc)) from None
    digest = _digest(request)
    if not agent.store.has(digest):
        raise NotFound(f"bundle {digest[:12]} is not held by node {agent.name}")
    meta = agent.store.meta(digest)
    return FileResponse(
        agent.store.path(digest),
        media_type="application/octet-stream",
        headers={SIGNATURE_HEADER: meta.signature, KEY_HEADER: meta.key_id},
    )


async def put_bundle(request: Request) -> Response:
    """
    summary: Upload a signed bundle (verified before it is stored)
    responses:
      200: {description: "Already held."}
      201: {description: "Verified and stored."}
      400: {description: "Bad digest, or missing signature headers."}
      413: {description: "Larger than the bundle limit."}
      422: {description: "Refused: digest mismatch, untrusted or bad signature, unsafe archive."}
    """
    agent = _agent(request)
    digest = _digest(request)
    signature = request.headers.get(SIGNATURE_HEADER, "")
    key_id = request.headers.get(KEY_HEADER, "")
    if not signature or not key_id:
        raise BadRequest("upload a bundle with its X-Bundle-Signature and X-Bundle-Key headers")
    data = await read_limited(request, MAX_BUNDLE_BYTES, "bundle")
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


async def deploy_function(request: Request) -> Response:
    """
    summary: Make a held bundle the mesh's desired version of its function
    description: 'Body {"name", "digest"}. The bundle must have been uploaded to this node.'
    responses:
      200: {description: "The desired entry: name, digest, version."}
      404: {description: "This node does not hold the bundle."}
      409: {description: "A trigger path of the function belongs to another function."}
      503: {description: "The mesh's Redis is unreachable."}
    """
    agent = _agent(request)
    body = await json_object(request)
    name, digest = _text(body, "name"), _text(body, "digest")
    try:
        check_digest(digest)
    except BundleRejected as exc:
        raise BadRequest(f"body.digest: {exc}") from None
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
        raise BadRequest(f"body.name: bundle {digest[:12]} holds function {spec.name!r}")
    meta = agent.store.meta(digest)
    triggers = [t.path for t in spec.triggers]
    entry = await _mesh_call(
        agent.desired_state().assign(name, digest, meta.signature, meta.key_id, triggers)
    )
    return JSONResponse({"name": entry.name, "digest": entry.digest, "version": entry.version})


async def remove_function(request: Request) -> Response:
    """
    summary: Remove a function from the mesh (its history is kept for rollback)
    responses:
      200: {description: "Removed."}
      404: {description: "Not deployed."}
    """
    name = request.path_params["name"]
    if not await _mesh_call(_agent(request).desired_state().remove(name)):
        raise NotFound(f"function {name!r} is not deployed to this mesh")
    return JSONResponse({"name": name, "removed": True})


async def rollback_function(request: Request) -> Response:
    """
    summary: Deploy an earlier version again
    description: 'Body {"to": version}, optional: by default the version before the current one.'
    responses:
      200: {description: "The new desired entry."}
      409: {description: "No such version."}
    """
    name = request.path_params["name"]
    body = await json_object(request, optional=True)
    target = body.get("to")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
        raise BadRequest(f"body.to: expected a version number, got {target!r}")
    entry = await _mesh_call(_agent(request).desired_state().rollback(name, target))
    return JSONResponse({"name": entry.name, "digest": entry.digest, "version": entry.version})


async def list_nodes(request: Request) -> Response:
    """
    summary: The live nodes of the mesh, their functions, digests and load
    responses:
      200: {description: "Nodes; when Redis is unreachable, only this node, marked degraded."}
    """
    node = node_of(request)
    try:
        records = await node.mesh.live_nodes()
        return JSONResponse({"mesh": "ok", "nodes": records})
    except RedisError as exc:
        return JSONResponse({"mesh": f"unreachable: {exc}", "nodes": [node.record()]})


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"body.{key}: expected a non-empty string")
    return value


def routes() -> list[Route]:
    return [
        Route("/system/bundles/{digest}", get_bundle, methods=["GET", "HEAD"]),
        Route("/system/bundles/{digest}", admin(put_bundle), methods=["PUT"]),
        Route("/system/functions", admin(deploy_function), methods=["POST"]),
        Route("/system/functions/{name}", admin(remove_function), methods=["DELETE"]),
        Route("/system/functions/{name}/rollback", admin(rollback_function), methods=["POST"]),
        Route("/system/nodes", admin(list_nodes), methods=["GET"]),
    ]
