"""Admin routes of asynchronous calls (bearer token): a call's status and result, cancel,
dead letters and their redrive."""

from __future__ import annotations

import base64
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.endpoints import admin, json_object, node_of
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.jobs import layout
from gateway.jobs.accept import JOB_ID
from gateway.jobs.layout import shown_status
from gateway.jobs.service import AsyncCalls
from registry import defaults
from runtime.errors import Unavailable
from runtime.event import parse_header_block

MAX_LISTED = 1000


def _calls(request: Request) -> AsyncCalls:
    return node_of(request).async_calls


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["call_id"]
    if not JOB_ID.fullmatch(job_id):
        raise BadRequest(f"{job_id[:80]!r}: a call id takes 1–64 of A–Z a–z 0–9 _ -")
    return job_id


async def get_call(request: Request) -> Response:
    """
    summary: An asynchronous call's status, timing, node, attempts and (once finished) result
    responses:
      200: {description: "status: queued, started, finished, failed (retry waits), dead, canceled"}
      404: {description: "No such call (or its result expired)."}
    """
    job_id = _job_id(request)
    job = await _redis(_calls(request).store.get(job_id))
    if job is None:
        raise NotFound(f"no async call {job_id!r} (unknown, or its result expired)")
    return JSONResponse(call_view(job_id, job))


async def cancel_call(request: Request) -> Response:
    """
    summary: Cancel an asynchronous call that has not started
    responses:
      200: {description: '{"call_id": ..., "status": "canceled"}'}
      404: {description: "No such call."}
      409: {description: "The call has started or ended: it cannot be canceled."}
    """
    job_id = _job_id(request)
    status = await _redis(_calls(request).store.cancel(job_id))
    if status == "missing":
        raise NotFound(f"no async call {job_id!r}")
    if status != "canceled":
        raise Conflict(f"async call {job_id} is {shown_status(status)}: too late to cancel it")
    return JSONResponse({"call_id": job_id, "status": "canceled"})


async def list_dead_letters(request: Request) -> Response:
    """
    summary: "Dead letters (async calls that exhausted their retries or age): one function, or
      every function of the mesh that has had an async call"
    responses:
      200: {description: '{"count": n, "dead_letters": [{call_id, function, failed_at, attempts,
        last_error}]}'}
    """
    calls = _calls(request)
    limit = _limit(request)
    letters: list[dict[str, Any]] = []
    count = 0
    for lane in await _lanes(request):
        count += await _redis(calls.store.dead_count(lane))
        if len(letters) < limit:
            rows = await _redis(calls.store.dead_letters(lane, limit - len(letters)))
            letters.extend(_letter(layout.lane_function(lane), row) for row in rows)
    return JSONResponse({"count": count, "dead_letters": letters})


async def _lanes(request: Request) -> list[str]:
    """The lanes of the function named in the path (every lane, when none is), by function."""
    name = request.path_params.get("name")
    lanes = await _redis(_calls(request).store.lanes())
    chosen = [lane for lane in lanes if name is None or layout.lane_function(lane) == name]
    return sorted(chosen, key=lambda lane: (layout.lane_function(lane), lane))


async def redrive(request: Request) -> Response:
    """
    summary: "Put a function's dead letters (all, or those in body call_ids) back in its queue"
    responses:
      200: {description: '{"redriven": n}: each runs again with the retries the function has now.'}
      400: {description: "A bad body."}
    """
    name = request.path_params["name"]
    body = await json_object(request, optional=True)
    unknown = set(body) - {"call_ids"}
    if unknown:
        raise BadRequest(f"body.{sorted(unknown)[0]}: unknown; expected call_ids")
    ids = body.get("call_ids", [])
    if not isinstance(ids, list) or not all(
        isinstance(i, str) and JOB_ID.fullmatch(i) for i in ids
    ):
        raise BadRequest("body.call_ids: expected a list of call ids")
    pool = node_of(request).supervisor.pools.get(name)
    retries = pool.spec.async_policy.retries if pool is not None else defaults.ASYNC_RETRIES
    count = 0
    for lane in await _lanes(request):
        count += await _redis(_calls(request).store.redrive(lane, retries, ids))
    return JSONResponse({"redriven": count})


def call_view(job_id: str, job: dict[str, bytes]) -> dict[str, Any]:
    """What ``GET /system/calls/{id}`` shows of a job hash."""

    def text(key: str) -> str:
        return job.get(key, b"").decode("utf-8", "replace")

    def moment(key: str) -> float | None:
        value = text(key)
        return float(value) if value else None

    status = shown_status(text("status"))
    started, ended = moment("ef_started"), moment("ef_ended")
    node = text("ef_node") or None
    view: dict[str, Any] = {
        "call_id": job_id,
        "function": text("ef_fn"),
        "status": status,
        "created_at": moment("ef_created"),
        "started_at": started if status != "queued" else None,
        "ended_at": ended if status not in ("queued", "started") else None,
        "duration_s": moment("ef_dur"),
        "node": node,
        "queue": text("origin"),  # PREFIX.NAME, or PREFIX.NAME@NODE: see gateway/jobs/lanes.py
        "attempts": int(text("ef_attempts") or 0),
        "retries_left": int(text("retries_left") or 0),
        "last_error": text("ef_error") or None,
        "retry_at": moment("ef_retry_at") if status == "failed" else None,
        "idempotency_key": text("ef_idem"),
        "result": None,
    }
    if status == "finished":
        view["result"] = _result(job)
    return view


def _result(job: dict[str, bytes]) -> dict[str, Any]:
    body = job.get("ef_rb", b"")
    result: dict[str, Any] = {
        "status": int(job.get("ef_code", b"0") or 0),
        "headers": dict(parse_header_block(job.get("ef_rh", b""))),
    }
    try:
        result["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        result["body_base64"] = base64.b64encode(body).decode()
    return result


def _letter(function: str, row: dict[str, bytes]) -> dict[str, Any]:
    ended = row.get("ef_ended", b"")
    return {
        "call_id": row["id"].decode(),
        "function": function,
        "failed_at": float(ended) if ended else None,
        "attempts": int(row.get("ef_attempts", b"0") or 0),
        "last_error": row.get("ef_error", b"").decode("utf-8", "replace"),
    }


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LISTED:
        raise BadRequest(f"?limit: expected 1 to {MAX_LISTED}, got {raw[:20]!r}")
    return int(raw)


async def _redis(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise Unavailable(f"the mesh's Redis is unreachable ({exc})") from None


def routes() -> list[Route]:
    return [
        Route("/system/calls/{call_id}", admin(get_call), methods=["GET"]),
        Route("/async-function/{call_id}", admin(cancel_call), methods=["DELETE"]),
        Route("/system/dead-letters", admin(list_dead_letters), methods=["GET"]),
        Route("/system/dead-letters/{name}", admin(list_dead_letters), methods=["GET"]),
        Route("/system/dead-letters/{name}/redrive", admin(redrive), methods=["POST"]),
    ]
