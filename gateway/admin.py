"""The admin API under ``/system`` (bearer token) and the open probes, declared as
:class:`~gateway.contract.Operation` s: the same declarations check requests and write
``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.contract import (
    FUNCTION_NAME,
    PROMETHEUS,
    Inputs,
    Operation,
    Reply,
    RequestModel,
    Whole,
    operation,
)
from gateway.endpoints import node_of
from gateway.errors import Invalid, NotFound
from gateway.node import Node
from runtime.pool import WarmPool


class FunctionView(BaseModel):
    """A function's pool on this node (the fields OpenFaaS clients read, and more)."""

    model_config = ConfigDict(extra="allow")
    name: str
    state: str
    min: int
    max: int
    replicas: int
    availableReplicas: int  # OpenFaaS' name
    invocationCount: int  # OpenFaaS' name
    workers: dict[str, int]
    counters: dict[str, Any]
    sandbox: dict[str, Any] | None


class FunctionDetail(BaseModel):
    """A function's pool here (when it runs here) and its rollout in the mesh."""

    model_config = ConfigDict(extra="allow")
    name: str
    mesh: dict[str, Any]


class Replicas(RequestModel):
    """Keep exactly ``replicas`` warm workers (0: scale to zero)."""

    replicas: Whole = Field(ge=0, le=1000)
    serviceName: str | None = None  # OpenFaaS' name


class Bounds(RequestModel):
    """Let the autoscaler keep between ``min`` and ``max`` workers (max ≥ min)."""

    min: Whole = Field(ge=0, le=1000)
    max: Whole = Field(ge=1, le=1000)
    serviceName: str | None = None  # OpenFaaS' name


class Scaled(BaseModel):
    name: str
    min: int
    max: int
    state: str


class Ready(BaseModel):
    ready: bool
    functions: dict[str, str]
    mesh: dict[str, Any]
    sandbox: dict[str, Any]


class Health(BaseModel):
    status: str
    node: str


class NodeInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    node: str
    role: str
    url: str
    sandbox: dict[str, Any]


@operation(
    "GET",
    "/system/functions",
    "List the functions on this node with their pools",
    replies={200: Reply("Each function's pool: state, workers, counters.", list[FunctionView])},
)
async def list_functions(request: Request, inputs: Inputs) -> Response:
    return JSONResponse([_with_openfaas_fields(p) for p in node_of(request).supervisor.snapshot()])


@operation(
    "GET",
    "/system/functions/{name}",
    "One function's pool state, counters, last error, and its rollout in the mesh",
    params={"name": FUNCTION_NAME},
    replies={200: Reply("The function's pool here, its desired version and each node's state.",
                        FunctionDetail)},
    errors=(404,),
)  # fmt: skip
async def get_function(request: Request, inputs: Inputs) -> Response:
    node = node_of(request)
    name = inputs.path["name"]
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


@operation(
    "POST",
    "/system/scale-function/{name}",
    "Set a function's pool bounds",
    description='Body {"replicas": n} keeps exactly n warm workers (n = 0 scales to zero; '
    'calls then start a worker on demand), or {"min": a, "max": b} sets the autoscaler\'s '
    "bounds (max ≥ min). Scaling a FATAL function gives it a fresh start.",
    params={"name": FUNCTION_NAME},
    body=Replicas | Bounds,
    replies={202: Reply("The new bounds.", Scaled)},
    errors=(404, 422),
)
async def scale_function(request: Request, inputs: Inputs) -> Response:
    pool = _pool(request, inputs.path["name"])
    given: Replicas | Bounds = inputs.body
    if given.serviceName is not None and given.serviceName != pool.name:
        raise Invalid(f"body.serviceName: {given.serviceName!r} does not match {pool.name!r}")
    if isinstance(given, Replicas):
        pool.scale(given.replicas, given.replicas or pool.max, exact=True)
    elif given.max < given.min:
        raise Invalid(f"body.max: expected an integer ≥ min ({given.min}), got {given.max}")
    else:
        pool.scale(given.min, given.max)
    return JSONResponse(
        {"name": pool.name, "min": pool.min, "max": pool.max, "state": pool.state.value},
        status_code=202,
    )


@operation(
    "GET",
    "/system/info",
    "This node's name, role, manifest, sandbox and uptime",
    replies={200: Reply("Node information.", NodeInfo)},
)
async def system_info(request: Request, inputs: Inputs) -> Response:
    return JSONResponse(node_of(request).info())


@operation(
    "GET",
    "/healthz",
    "Liveness; 200 while the gateway answers",
    auth="none",
    tag="probes",
    replies={200: Reply("The gateway is alive.", Health)},
)
async def healthz(request: Request, inputs: Inputs) -> Response:
    return JSONResponse({"status": "ok", "node": node_of(request).name})


@operation(
    "GET",
    "/readyz",
    "Readiness; 200 when every pool runs with at least its minimum of workers",
    description="A node whose mesh (Redis) is unreachable still serves, so it stays ready; "
    '"mesh" in the body says it is degraded, "sandbox" whether functions are sandboxed.',
    auth="none",
    tag="probes",
    replies={
        200: Reply("Ready.", Ready),
        503: Reply("Some pool is starting, backing off or fatal.", Ready),
    },
)
async def readyz(request: Request, inputs: Inputs) -> Response:
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


@operation(
    "GET",
    "/metrics",
    "Prometheus metrics",
    auth="none",
    tag="probes",
    replies={200: Reply("Metrics in the Prometheus text format.", media=PROMETHEUS)},
)
async def metrics(request: Request, inputs: Inputs) -> Response:
    return Response(node_of(request).metrics.render(), media_type=PROMETHEUS)


def _pool(request: Request, name: str) -> WarmPool:
    pool = node_of(request).supervisor.pools.get(name)
    if pool is None:
        raise NotFound(f"no function named {name!r} on this node")
    return pool


def _with_openfaas_fields(pool: dict[str, Any]) -> dict[str, Any]:
    """Add the field names OpenFaaS clients read (replicas, availableReplicas, ...)."""
    workers = pool["workers"]
    pool["replicas"] = workers["starting"] + workers["ready"] + workers["busy"]
    pool["availableReplicas"] = workers["ready"] + workers["busy"]
    pool["invocationCount"] = pool["counters"]["calls"]
    return pool


OPERATIONS: list[Operation] = [
    list_functions,
    get_function,
    scale_function,
    system_info,
    healthz,
    readyz,
    metrics,
]
