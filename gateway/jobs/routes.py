"""Admin routes of asynchronous calls (bearer token): a call's status and result, cancel,
dead letters and their redrive."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.contract import (
    CALL_ID,
    FUNCTION_NAME,
    Inputs,
    Operation,
    QueryModel,
    Reply,
    RequestModel,
    operation,
)
from gateway.endpoints import node_of
from gateway.errors import Conflict, NotFound
from gateway.jobs import layout
from gateway.jobs.layout import shown_status
from gateway.jobs.service import AsyncCalls
from registry import defaults
from runtime.errors import Unavailable
from runtime.event import parse_header_block

MAX_LISTED = 1000


class CallView(BaseModel):
    """An asynchronous call as ``GET /system/calls/{id}`` shows it."""

    model_config = ConfigDict(extra="allow")
    call_id: str
    function: str
    status: str
    attempts: int
    result: dict[str, Any] | None


class Canceled(BaseModel):
    call_id: str
    status: str


class DeadLetters(BaseModel):
    count: int
    dead_letters: list[dict[str, Any]]


class DeadLettersQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=MAX_LISTED)] = 100


class Redrive(RequestModel):
    """The dead letters to put back (default: every one of the function)."""

    call_ids: list[Annotated[str, Field(pattern=f"^{CALL_ID.pattern}$")]] | None = None


class Redriven(BaseModel):
    redriven: int


def _calls(request: Request) -> AsyncCalls:
    return node_of(request).async_calls


@operation(
    "GET",
    "/system/calls/{call_id}",
    "An asynchronous call's status, timing, node, attempts and (once finished) result",
    description="status: queued, started, finished, failed (a retry waits), dead, canceled.",
    tag="async",
    params={"call_id": CALL_ID},
    replies={200: Reply("The call.", CallView)},
    errors=(404, 503),
)
async def get_call(request: Request, inputs: Inputs) -> Response:
    job_id = inputs.path["call_id"]
    job = await _redis(_calls(request).store.get(job_id))
    if job is None:
        raise NotFound(f"no async call {job_id!r} (unknown, or its result expired)")
    return JSONResponse(call_view(job_id, job))


@operation(
    "DELETE",
    "/async-function/{name}",
    "Cancel an asynchronous call that has not started",
    description="Here the path names a call (its X-Call-Id), not a function: other methods on "
    "this path start an asynchronous call of the function it names.",
    tag="async",
    params={"name": CALL_ID},
    replies={200: Reply("Canceled.", Canceled)},
    errors=(404, 409, 503),
)
async def cancel_call(request: Request, inputs: Inputs) -> Response:
    job_id = inputs.path["name"]
    status = await _redis(_calls(request).store.cancel(job_id))
    if status == "missing":
        raise NotFound(f"no async call {job_id!r}")
    if status != "canceled":
        raise Conflict(f"async call {job_id} is {shown_status(status)}: too late to cancel it")
    return JSONResponse({"call_id": job_id, "status": "canceled"})


async def _dead_letters(request: Request, name: str | None, limit: int) -> Response:
    calls = _calls(request)
    letters: list[dict[str, Any]] = []
    count = 0
    for lane in await _lanes(request, name):
        count += await _redis(calls.store.dead_count(lane))
        if len(letters) < limit:
            rows = await _redis(calls.store.dead_letters(lane, limit - len(letters)))
            letters.extend(_letter(layout.lane_function(lane), row) for row in rows)
    return JSONResponse({"count": count, "dead_letters": letters})


@operation(
    "GET",
    "/system/dead-letters",
    "Dead letters of every function of the mesh that has had an async call",
    description="Async calls that exhausted their retries or their age.",
    tag="async",
    query=DeadLettersQuery,
    replies={200: Reply("How many there are, and the first ones.", DeadLetters)},
    errors=(503,),
)
async def list_dead_letters(request: Request, inputs: Inputs) -> Response:
    return await _dead_letters(request, None, inputs.query.limit)


@operation(
    "GET",
    "/system/dead-letters/{name}",
    "One function's dead letters",
    tag="async",
    params={"name": FUNCTION_NAME},
    query=DeadLettersQuery,
    replies={200: Reply("How many there are, and the first ones.", DeadLetters)},
    errors=(503,),
)
async def list_function_dead_letters(request: Request, inputs: Inputs) -> Response:
    return await _dead_letters(request, inputs.path["name"], inputs.query.limit)


async def _lanes(request: Request, name: str | None) -> list[str]:
    """The lanes of function ``name`` (every lane, when None), by function."""
    lanes = await _redis(_calls(request).store.lanes())
    chosen = [lane for lane in lanes if name is None or layout.lane_function(lane) == name]
    return sorted(chosen, key=lambda lane: (layout.lane_function(lane), lane))


@operation(
    "POST",
    "/system/dead-letters/{name}/redrive",
    "Put a function's dead letters (all, or those in call_ids) back in its queue",
    description="Each runs again with the retries the function has now.",
    tag="async",
    params={"name": FUNCTION_NAME},
    body=Redrive,
    body_optional=True,
    replies={200: Reply("How many went back.", Redriven)},
    errors=(503,),
)
async def redrive(request: Request, inputs: Inputs) -> Response:
    name = inputs.path["name"]
    ids = inputs.body.call_ids if inputs.body is not None and inputs.body.call_ids else []
    pool = node_of(request).supervisor.pools.get(name)
    retries = pool.spec.async_policy.retries if pool is not None else defaults.ASYNC_RETRIES
    count = 0
    for lane in await _lanes(request, name):
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


async def _redis(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise Unavailable(f"the mesh's Redis is unreachable ({exc})") from None


OPERATIONS: list[Operation] = [
    get_call,
    cancel_call,
    list_dead_letters,
    list_function_dead_letters,
    redrive,
]
