"""The call records' HTTP API.

=======  ========================  ==========================================================
verb     path                      who
=======  ========================  ==========================================================
POST     /system/records           a node of the mesh (mesh key): a batch of its records, to
                                   a ``--role cloud`` node, which stores them
GET      /system/records           admin, on the cloud node: ``?function=&node=&since=&after=
                                   &limit=``, in arrival order
GET      /system/records/status    admin, any node: waiting, shipped, dropped
=======  ========================  ==========================================================

Each route is an :class:`~gateway.contract.Operation` (it checks requests and writes
``/openapi.json``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.contract import Inputs, Operation, QueryModel, Reply, operation
from gateway.endpoints import node_of
from gateway.errors import NotFound, Unauthorized
from gateway.records.buffer import check_batch
from gateway.records.store import MAX_LIMIT, RecordStore
from registry.errors import MeshAuthError
from registry.meshauth import NONCE_HEADER

MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_NUMBER = 2**63 - 1  # SQLite's largest integer


class RecordBatch(BaseModel):
    """A node's call records: ``node`` is the signing node, and every record is its own."""

    node: str
    records: list[dict[str, Any]]


class Received(BaseModel):
    received: int
    stored: int


class RecordsQuery(QueryModel):
    function: Annotated[str, Field(max_length=200)] = ""
    node: Annotated[str, Field(max_length=200)] = ""
    since: Annotated[float, Field(ge=0, le=MAX_NUMBER, allow_inf_nan=False)] | None = None
    after: Annotated[int, Field(ge=0, le=MAX_NUMBER)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 1000


class Records(BaseModel):
    records: list[dict[str, Any]]
    next: int


class RecordsStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    node: str
    role: str
    quota: int


def _store(request: Request) -> RecordStore:
    node = node_of(request)
    store = node.recorder.store
    if store is None:
        raise NotFound(
            f"records are stored on the cloud node: {node.name} is an edge node and ships "
            "its records there (GET /system/records/status shows how many wait)"
        )
    return store


@operation(
    "POST",
    "/system/records",
    "Store a batch of another node's call records (on a --role cloud node)",
    description="Signed with the mesh key, body and nonce included. A record already held "
    "(same node and call id) is not stored again.",
    auth="mesh",
    tag="records",
    body=RecordBatch,
    raw_body=True,
    max_body_bytes=MAX_BATCH_BYTES,
    replies={200: Reply("Stored: how many were new.", Received)},
    errors=(400, 404),
)
async def receive_records(request: Request, inputs: Inputs) -> Response:
    store = _store(request)
    node = node_of(request)
    try:
        node.recorder.nonces.check(request.headers.get(NONCE_HEADER, ""))
    except MeshAuthError as exc:
        raise Unauthorized(f"records refused: {exc}") from None
    records = check_batch(inputs.body, request.state.mesh_sender)
    new = await asyncio.to_thread(store.add, records)
    return JSONResponse({"received": len(records), "stored": new})


@operation(
    "GET",
    "/system/records",
    "Call records of the whole mesh, in arrival order (on a --role cloud node)",
    description="Filters: function, node, since (Unix time), after (a seq: the next page), "
    f"limit (at most {MAX_LIMIT}).",
    tag="records",
    query=RecordsQuery,
    replies={200: Reply('The records and "next" (pass it as after for the next page).', Records)},
    errors=(404,),
)
async def list_records(request: Request, inputs: Inputs) -> Response:
    store = _store(request)
    query: RecordsQuery = inputs.query
    records = await asyncio.to_thread(
        store.query,
        function=query.function,
        node=query.node,
        since=query.since,
        after=query.after,
        limit=query.limit,
    )
    last = records[-1]["seq"] if records else query.after
    return JSONResponse({"records": records, "next": last})


@operation(
    "GET",
    "/system/records/status",
    "This node's call records: waiting, shipped to the cloud, dropped over the quota",
    tag="records",
    replies={200: Reply("Counts, the quota, the cloud node and the last error.", RecordsStatus)},
)
async def records_status(request: Request, inputs: Inputs) -> Response:
    return JSONResponse(await node_of(request).recorder.status())


OPERATIONS: list[Operation] = [receive_records, list_records, records_status]
