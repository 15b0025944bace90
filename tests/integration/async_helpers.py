"""Helpers for the asynchronous-call integration tests (``test_async.py``): a fixture
function that records every run in a Redis list, calls accepted with 202 (one by one or in
a burst), the admin views of a call and of the dead letters, RQ's own CLI, and the removal
of the ``rq:*`` keys a test's nodes wrote (RQ's key names do not start with the test's key
prefix, so the ``redis_prefix`` fixture does not remove them).

Every wait is bounded; every node is started through the ``start_node`` factory (killed by
process group at teardown); every request goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.conftest import NodeProcess, wait_for
from tests.integration.mesh_helpers import Mesh, admin_get

CALL_TIMEOUT_S = 10.0
FINISH_TIMEOUT_S = 30.0
RQ_TIMEOUT_S = 30.0
ALLOW_LOCAL_CALLBACKS = ("--callback-allow", "127.0.0.1")
FINAL = frozenset({"finished", "dead", "canceled"})
STATUSES = FINAL | {"queued", "started", "failed"}

# Every run of the function appends its X-Idempotency-Key to the
# Redis list ASYNC_TEST_RUNS once it has slept ASYNC_TEST_SLEEP_MS: a run cut short by a
# SIGKILL leaves nothing there. A failing version raises after appending, naming the run.
# A call whose body is ``ping`` (``mesh_helpers.version_of``) only answers the version.
HANDLER = """\
import os
import time

import redis

VERSION = {version!r}
FAILING = {failing!r}
_clients = []


def runs():
    if not _clients:
        _clients.append(redis.Redis.from_url(os.environ["ASYNC_TEST_REDIS"]))
    return _clients[0]


def handle(event):
    if event.body == b"ping":
        return {{"version": VERSION}}
    time.sleep(int(os.environ.get("ASYNC_TEST_SLEEP_MS", "0")) / 1000)
    key = event.headers.get("x-idempotency-key", "")
    run = runs().rpush(os.environ["ASYNC_TEST_RUNS"], key)
    if FAILING:
        raise RuntimeError(f"not fixed yet: run {{run}}")
    return {{
        "version": VERSION,
        "call_id": event.headers.get("x-call-id", ""),
        "key": key,
        "body": event.text(),
    }}
"""


# ------------------------------------------------------------------------ fixture functions


def runs_key(mesh: Mesh, name: str) -> str:
    """The Redis list the function ``name`` appends to (under the test's key prefix)."""
    return f"{mesh.prefix}:async-runs:{name}"


def write_async_function(
    mesh: Mesh,
    name: str,
    *,
    version: str = "v1",
    failing: bool = False,
    sleep_ms: int = 0,
    pool: str = "{min: 1, max: 4}",
    extra: str = "",
    runs_at: tuple[str, str] | None = None,
) -> Path:
    """Write ``mesh.project/NAME/handler.py`` (the handler above) and its manifest
    ``mesh.project/NAME.yaml``; return the manifest. ``extra``: more lines of the
    function's block (``async: ...``, ``triggers: ...``), each indented by four spaces.
    ``runs_at``: the Redis URL and list the runs go to (default: the mesh's Redis,
    :func:`runs_key`)."""
    runs_url, runs_list = runs_at or (mesh.redis_url, runs_key(mesh, name))
    folder = mesh.project / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER.format(version=version, failing=failing))
    manifest = mesh.project / f"{name}.yaml"
    manifest.write_text(
        "version: 1\n"
        "functions:\n"
        f"  {name}:\n"
        f"    handler: {name}/handler.py:handle\n"
        f"    pool: {pool}\n"
        "    env:\n"
        f"      ASYNC_TEST_REDIS: {runs_url!r}\n"
        f"      ASYNC_TEST_RUNS: {runs_list!r}\n"
        f"      ASYNC_TEST_SLEEP_MS: {sleep_ms}\n" + extra
    )
    return manifest


def runs(client: redis.Redis, mesh: Mesh, name: str) -> list[str]:
    """The idempotency keys of the runs of ``name`` so far, in order."""
    return [item.decode() for item in client.lrange(runs_key(mesh, name), 0, -1)]


# ------------------------------------------------------------------------------ calls


def enqueue(
    node: NodeProcess,
    name: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """``POST /async-function/NAME``, whatever the answer."""
    return httpx.post(
        f"{node.url}/async-function/{name}",
        content=body,
        headers=dict(headers or {}),
        timeout=CALL_TIMEOUT_S,
    )


def accepted(reply: httpx.Response, name: str, again: bool = False) -> str:
    """Check that ``reply`` accepted a call of ``name`` as the contract says; its call id.
    ``again``: the call id was given before, so the call may be past *queued* already."""
    assert reply.status_code == 202, f"{reply.status_code} {reply.text}"
    call_id = reply.headers.get("x-call-id", "")
    assert call_id, f"no X-Call-Id in {dict(reply.headers)}"
    document = reply.json()
    if again:  # the answer may say more ({"duplicate": true})
        assert document["status"] in STATUSES, document
        document = {key: document[key] for key in ("call_id", "function", "status")}
    status = document["status"] if again else "queued"
    assert document == {"call_id": call_id, "function": name, "status": status}, document
    return call_id


def enqueue_burst(
    node: NodeProcess, name: str, calls: list[tuple[bytes, dict[str, str]]]
) -> list[httpx.Response]:
    """Send every (body, headers) of ``calls`` at once, one connection each; the answers in
    the same order. A call that gets no answer fails the test."""

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S, limits=limits) as client:
            url = f"{node.url}/async-function/{name}"
            posts = [client.post(url, content=body, headers=headers) for body, headers in calls]
            return list(await asyncio.gather(*posts))

    return asyncio.run(burst())


def call_status(node: NodeProcess, call_id: str) -> dict[str, Any]:
    """``GET /system/calls/ID`` (must be 200)."""
    reply = admin_get(node, f"/system/calls/{call_id}")
    assert reply.status_code == 200, f"{call_id}: {reply.status_code} {reply.text}"
    status: dict[str, Any] = reply.json()
    return status


def wait_status(
    node: NodeProcess,
    call_ids: Iterable[str],
    status: str,
    timeout_s: float = FINISH_TIMEOUT_S,
) -> dict[str, dict[str, Any]]:
    """Until every call of ``call_ids`` has ``status``; their views, by call id. A call that
    reaches another final status fails at once."""
    pending = list(call_ids)
    views: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        for call_id in list(pending):
            view = call_status(node, call_id)
            if view["status"] == status:
                views[call_id] = view
                pending.remove(call_id)
            else:
                assert view["status"] not in FINAL, f"wanted {status}: {view}"
        return not pending

    wait_for(done, timeout_s, 0.1, f"{len(pending)} calls to be {status}")
    return views


def result_json(view: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a finished call's result (the handler's answer)."""
    result = view["result"]
    assert result is not None and result["status"] == 200, view
    answer: dict[str, Any] = json.loads(result["body"])
    return answer


def answer(call_id: str, body: str, key: str = "", version: str = "v1") -> dict[str, Any]:
    """What the handler answers a call with (``key``: the X-Idempotency-Key it was given,
    by default the call id)."""
    return {"version": version, "call_id": call_id, "key": key or call_id, "body": body}


def cancel(node: NodeProcess, call_id: str, token: bool = True) -> httpx.Response:
    """``DELETE /async-function/ID``, with the admin token unless ``token`` is false."""
    headers = node.admin_headers() if token else {}
    return httpx.delete(
        f"{node.url}/async-function/{call_id}", headers=headers, timeout=CALL_TIMEOUT_S
    )


def dead_letters(node: NodeProcess, name: str = "") -> dict[str, Any]:
    """``GET /system/dead-letters[/NAME]`` (must be 200)."""
    path = f"/system/dead-letters/{name}" if name else "/system/dead-letters"
    reply = admin_get(node, path)
    assert reply.status_code == 200, f"{path}: {reply.status_code} {reply.text}"
    listing: dict[str, Any] = reply.json()
    return listing


def redrive(node: NodeProcess, name: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/system/dead-letters/{name}/redrive",
        headers=node.admin_headers(),
        timeout=CALL_TIMEOUT_S,
    )


# ------------------------------------------------------------------------------- RQ


def rq_info(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``rq info --url REDIS_URL ARGS``: RQ's own CLI, installed next to this Python."""
    rq = Path(sys.executable).parent / "rq"
    assert rq.is_file(), f"RQ's CLI is not installed at {rq}"
    return subprocess.run(
        [str(rq), "info", "--url", redis_url, *args],
        capture_output=True,
        text=True,
        timeout=RQ_TIMEOUT_S,
        check=False,
    )


def forget_rq(client: redis.Redis, prefix: str) -> None:
    """Delete what the nodes of the test with key prefix ``prefix`` left under ``rq:``: its
    queues (``PREFIX.FUNCTION``), their registries, the jobs listed in them and the queues'
    workers. Call it once those nodes are dead."""
    queue_prefix = f"{prefix}."
    keys = {raw.decode() for raw in client.scan_iter(match=f"rq:*{queue_prefix}*", count=1000)}
    job_ids: set[str] = set()
    workers: set[str] = set()
    for key in keys:
        kind = client.type(key)
        if kind == b"list":  # rq:queue:Q
            job_ids.update(item.decode() for item in client.lrange(key, 0, -1))
        elif kind == b"zset":  # rq:wip:Q (ID:TOKEN), rq:finished:Q, rq:failed:Q ...
            job_ids.update(item.decode().split(":")[0] for item in client.zrange(key, 0, -1))
        elif kind == b"set" and key.startswith("rq:workers:"):
            workers.update(item.decode() for item in client.smembers(key))
    keys.update(f"rq:job:{job_id}" for job_id in job_ids)
    keys.update(f"rq:results:{job_id}" for job_id in job_ids)
    keys.update(workers)  # RQ keeps worker keys (rq:worker:NAME) in its sets
    if keys:
        client.unlink(*keys)
    if workers:
        client.srem("rq:workers", *workers)
    queues = [
        raw
        for raw in client.smembers("rq:queues")
        if raw.startswith(b"rq:queue:" + queue_prefix.encode())
    ]
    if queues:
        client.srem("rq:queues", *queues)
