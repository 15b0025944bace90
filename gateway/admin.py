"""The admin API under ``/system`` (bearer token) and the open probes.

Endpoint docstrings are OpenAPI fragments; ``/openapi.json`` is generated from them.
"""

from __future__ import annotations

import json
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.endpoints import admin, json_object, node_of
from gateway.errors import BadRequest, NotFound
from gateway.node import Node
from runtime.pool import WarmPool


async def list_functions(request: Request) -> Response:
    """
    summary: List the functions on this node with their pools
    responses:
      200: {description: "A list of functions: pool state, worker counts, counters."}
      401: {description: "No bearer token."}
      403: {description: "Wrong bearer token."}
    """
    return JSONResponse([_with_openfaas_fields(p) for p in node_of(request).supervisor.snapshot()])


async def get_function(request: Request) -> Response:
    """
    summary: One function's pool state, counters, last error, and its rollout in the mesh
    responses:
      200: {description: "The function's pool here, its desired version and each node's state."}
      404: {description: "No such function on this node or in its mesh."}
    """
    node = node_of(request)
    name = request.path_params["name"]
    pool = node.supervisor.pools.get(name)
    view: dict[str, Any] = _with_openfaas_fields(pool.snapshot()) if pool else {"name": name}
    view["mesh"] = await _mesh_view(node, name)
    if pool is None and view["mesh"].get("desired") is None:
        raise NotFound(f"no function named {name!r} on this node or in its mesh")
    return JSONResponse(view)


async def _mesh_view(node: Node, name: str) -> dict[str, Any]:
    """The function's desired version and how each live node is doing with it."""
    try:
        entry = await node.mesh.desired_state().entry(name)
        records = await node.mesh.live_nodes()
    except RedisError as exc:
        local = node.record()["functions"].get(name)
        return {"reachable": False, "error": str(exc), "nodes": {node.name: local}}
    return {
        "reachable": True,
        "desired": {"digest": entry.digest, "version": entry.version} if entry else None,
        "nodes": {r["name"]: r["functions"].get(name) for r in records},
    }


async def scale_function(request: Request) -> Response:
    """
    summary: Set a function's pool bounds
    description: >
      Body {"replicas": n} keeps exactly n warm workers (n = 0 scales to zero; calls then
      start a worker on demand), or {"min": a, "max": b} sets the autoscaler's bounds.
      Scaling a FATAL function gives it a fresh start.
    responses:
      202: {description: "The new bounds."}
      400: {description: "Bad body."}
      404: {description: "No such function on this node."}
    """
    pool = _pool(request)
    body = await json_object(request)
    low, high = _bounds(body, pool.name, pool.max)
    pool.scale(low, high, exact="replicas" in body)
    return JSONResponse(
        {"name": pool.name, "min": pool.min, "max": pool.max, "state": pool.state.value},
        status_code=202,
    )


async def system_info(request: Request) -> Response:
    """
    summary: This node's name, role, manifest and uptime
    responses:
      200: {description: "Node information."}
    """
    return JSONResponse(node_of(request).info())


async def healthz(request: Request) -> Response:
    """
    summary: Liveness; 200 while the gateway answers
    responses:
      200: {description: "The gateway is alive."}
    """
    return JSONResponse({"status": "ok", "node": node_of(request).name})


async def readyz(request: Request) -> Response:
    """
    summary: Readiness; 200 when every pool runs with at least its minimum of workers
    description: A node whose mesh (Redis) is unreachable still serves, so it stays ready;
      "mesh" in the body says it is degraded.
    responses:
      200: {description: "Ready."}
      503: {description: "Some pool is starting, backing off or fatal."}
    """
    node = node_of(request)
    pools = {p["name"]: p["state"] for p in node.supervisor.snapshot()}
    ready = node.supervisor.ready()
    body = {
        "ready": ready,
        "functions": pools,
        "mesh": node.mesh.status(),
        "sandbox": node.sandboxes.status(),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """
    summary: Prometheus metrics
    responses:
      200: {description: "Metrics in the Prometheus text format."}
    """
    return Response(
        node_of(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def _pool(request: Request) -> WarmPool:
    name = request.path_params["name"]
    pool = node_of(request).supervisor.pools.get(name)
    if pool is None:
        raise NotFound(f"no function named {name!r} on this node")
    return pool


def _bounds(body: dict[str, Any], name: str, current_max: int) -> tuple[int, int]:
    unknown = set(body) - {"replicas", "min", "max", "serviceName"}
    if unknown:
        raise BadRequest(
            f"body: unknown key {sorted(unknown)[0]!r}; expected replicas, or min and max"
        )
    if "serviceName" in body and body["serviceName"] != name:
        raise BadRequest(f"body.serviceName: {body['serviceName']!r} does not match {name!r}")
    if "replicas" in body:
        if "min" in body or "max" in body:
            raise BadRequest("body: give either replicas, or min and max, not both")
        replicas = _count(body, "replicas", 0)
        return replicas, (replicas if replicas else current_max)
    if "min" not in body or "max" not in body:
        raise BadRequest("body: expected replicas, or both min and max")
    low = _count(body, "min", 0)
    high = _count(body, "max", 1)
    if high < low:
        raise BadRequest(f"body.max: expected an integer ≥ min ({low}), got {high}")
    return low, high


def _count(body: dict[str, Any], key: str, least: int) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least or value > 1000:
        raise BadRequest(
            f"body.{key}: expected an integer from {least} to 1000, got {json.dumps(value)}"
        )
    return value


def _with_openfaas_fields(pool: dict[str, Any]) -> dict[str, Any]:
    """Add the field names OpenFaaS clients read (replicas, availableReplicas, ...)."""
    workers = pool["workers"]
    pool["replicas"] = workers["starting"] + workers["ready"] + workers["busy"]
    pool["availableReplicas"] = workers["ready"] + workers["busy"]
    pool["invocationCount"] = pool["counters"]["calls"]
    return pool


def routes() -> list[Route]:
    return [
        Route("/system/functions", admin(list_functions), methods=["GET"]),
        Route("/system/functions/{name}", admin(get_function), methods=["GET"]),
        Route("/system/scale-function/{name}", admin(scale_function), methods=["POST"]),
        Route("/system/info", admin(system_info), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
