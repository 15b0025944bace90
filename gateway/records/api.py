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
"""

from __future__ import annotations

import asyncio
import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.endpoints import admin, node_of, read_limited
from gateway.errors import BadRequest, NotFound, Unauthorized
from gateway.records.buffer import check_batch
from gateway.records.store import MAX_LIMIT, RecordStore
from registry.errors import MeshAuthError
from registry.meshauth import NONCE_HEADER, verify_request

MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_NUMBER = 2**63 - 1  # SQLite's largest integer


def _store(request: Request) -> RecordStore:
    node = node_of(request)
    store = node.recorder.store
    if store is None:
        raise NotFound(
            f"records are stored on the cloud node: {node.name} is an edge node and ships "
            "its records there (GET /system/records/status shows how many wait)"
        )
    return store


async def receive_records(request: Request) -> Response:
    """
    summary: Store a batch of another node's call records (on a --role cloud node)
    description: 'Body {"node": NAME, "records": [...]}, signed with the mesh key. A record
      already held (same node and call id) is not stored again.'
    responses:
      200: {description: "Stored: how many were new."}
      400: {description: "Not a batch of records (the message names the bad field)."}
      401: {description: "Not signed with this mesh's key for this node."}
      404: {description: "This node is not the cloud node."}
      413: {description: "Larger than the batch limit."}
    """
    store = _store(request)
    body = await read_limited(request, MAX_BATCH_BYTES, "a batch")
    sender = _verify(request, body)
    records = check_batch(body, sender)
    new = await asyncio.to_thread(store.add, records)
    return JSONResponse({"received": len(records), "stored": new})


async def list_records(request: Request) -> Response:
    """
    summary: Call records of the whole mesh, in arrival order (on a --role cloud node)
    description: 'Filters: function, node, since (Unix time), after (a seq: the next page),
      limit (at most 10000, default 1000).'
    responses:
      200: {description: '{"records": [...], "next": SEQ} (next: pass as after)'}
      400: {description: "A bad filter."}
      404: {description: "This node is not the cloud node."}
    """
    store = _store(request)
    query = request.query_params
    unknown = sorted(set(query) - {"function", "node", "since", "after", "limit"})
    if unknown:
        raise BadRequest(f"?{unknown[0]}: unknown; filter by function, node, since, after, limit")
    since = _time(query["since"], "since") if "since" in query else None
    after = _whole(query.get("after", "0"), "after")
    limit = _whole(query.get("limit", "1000"), "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"?limit: expected 1 to {MAX_LIMIT}, got {limit}")
    records = await asyncio.to_thread(
        store.query,
        function=query.get("function", ""),
        node=query.get("node", ""),
        since=since,
        after=after,
        limit=limit,
    )
    return JSONResponse({"records": records, "next": records[-1]["seq"] if records else after})


async def records_status(request: Request) -> Response:
    """
    summary: This node's call records - waiting, shipped to the cloud, dropped over the quota
    responses:
      200: {description: "Counts, the quota, the cloud node and the last error."}
    """
    return JSONResponse(await node_of(request).recorder.status())


def _verify(request: Request, body: bytes) -> str:
    node = node_of(request)
    try:
        sender = verify_request(
            node.mesh.mesh_key,
            request.method,
            request.url.path,
            request.headers,
            node.name,
            body=body,
        )
        node.recorder.nonces.check(request.headers[NONCE_HEADER])
    except MeshAuthError as exc:
        raise Unauthorized(f"records refused: {exc}") from None
    return sender


def _whole(value: str, name: str) -> int:
    if value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= MAX_NUMBER:
        return int(value)
    raise BadRequest(f"?{name}: expected a whole number from 0 to {MAX_NUMBER}, got {value!r:.40}")


def _time(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= MAX_NUMBER:  # also refuses nan
        raise BadRequest(f"?{name}: expected a Unix time ≥ 0, got {value!r:.40}")
    return number


def routes() -> list[Route]:
    return [
        Route("/system/records", receive_records, methods=["POST"]),
        Route("/system/records", admin(list_records), methods=["GET"]),
        Route("/system/records/status", admin(records_status), methods=["GET"]),
    ]
