"""Asynchronous calls with real parts: `edgefaas up` processes sharing a real Redis, calls
accepted with 202 over real HTTP and kept as RQ jobs, a callback receiver on 127.0.0.1, the
real CLI (`deploy`, `dead-letters`) and RQ's own CLI (`rq info`).

The fixture function (``async_helpers.HANDLER``) appends the X-Idempotency-Key it is given
to a Redis list once it has run, so a test counts the runs of each call: every call runs,
none twice, a canceled one never. Each test builds its own mesh (its own Redis key prefix,
hence its own RQ queues ``PREFIX.FUNCTION``); the ``rq:*`` keys its nodes wrote are removed
after it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import wait_for
from tests.integration.async_helpers import (
    ALLOW_LOCAL_CALLBACKS,
    FINISH_TIMEOUT_S,
    accepted,
    answer,
    call_status,
    cancel,
    dead_letters,
    enqueue,
    enqueue_burst,
    forget_rq,
    redrive,
    result_json,
    rq_info,
    runs,
    wait_status,
    write_async_function,
)
from tests.integration.mesh_helpers import Mesh, StartNode, admin_get, function_view
from tests.integration.spill_helpers import CountingServer, Received
from tests.integration.test_mesh import new_mesh

pytestmark = pytest.mark.slow

BURST = 60
SETTLE_S = 1.5  # after the last expected run or callback: time for a duplicate to show
AT_ONCE_S = 0.5  # a 202 comes before a run of the slow functions here could end
NODE_LOSS_S = 30.0  # lease 4 s + reaping + the reruns, with room for a loaded machine


@pytest.fixture
def mesh(
    start_node: StartNode,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    redis_client: redis.Redis,
) -> Iterator[Mesh]:
    # The test functions record their runs in the mesh's Redis, through its Unix socket in
    # the test's folder: a sandbox hides both (on purpose), so these nodes run without one.
    mesh = new_mesh(start_node, tmp_path, redis_url, redis_prefix, sandbox="off")
    yield mesh
    mesh.stop()
    for node in mesh.nodes:  # shown by pytest when the test failed
        print(f"----- log of the node at {node.url} -----\n{node.log()[-6000:]}")
    forget_rq(redis_client, redis_prefix)


def callbacks_by_call(received: list[Received]) -> dict[str, list[Received]]:
    by_call: dict[str, list[Received]] = {}
    for request in received:
        by_call.setdefault(request.headers.get("x-call-id", ""), []).append(request)
    return by_call


def assert_callback(request: Received, call_id: str, name: str, status: int) -> None:
    assert request.method == "POST", request
    assert request.headers.get("x-call-id") == call_id, request.headers
    assert request.headers.get("x-function-name") == name, request.headers
    assert request.headers.get("x-function-status") == str(status), request.headers
    assert float(request.headers["x-duration-seconds"]) >= 0, request.headers


# ------------------------------------------------------------------ accepted, run, called back


def test_a_burst_is_accepted_and_every_call_runs_once_and_is_called_back_once(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    manifest = write_async_function(mesh, "tally", pool="{min: 2, max: 4}")
    node = mesh.start(manifest, "--node", "alpha", *ALLOW_LOCAL_CALLBACKS)
    mesh.wait_serving("tally", "v1", [node])

    with CountingServer() as hooks:
        calls = [
            (f"burst {i}".encode(), {"X-Callback-Url": f"{hooks.url}/done/{i}"})
            for i in range(BURST)
        ]
        replies = enqueue_burst(node, "tally", calls)
        ids = [accepted(reply, "tally") for reply in replies]
        assert len(set(ids)) == BURST

        views = wait_status(node, ids, "finished")
        wait_for(lambda: len(hooks.received) >= BURST, 20, 0.05, f"{BURST} callbacks")
        time.sleep(SETTLE_S)
        received = list(hooks.received)

    for i, call_id in enumerate(ids):
        view = views[call_id]
        assert view["call_id"] == call_id and view["function"] == "tally", view
        assert view["node"] == "alpha" and view["attempts"] == 1, view
        assert view["created_at"] <= view["started_at"] <= view["ended_at"], view
        assert view["duration_s"] >= 0 and view["last_error"] in (None, ""), view
        # The function saw the call id, and the idempotency key defaults to it.
        assert result_json(view) == answer(call_id, f"burst {i}")
    assert sorted(runs(redis_client, mesh, "tally")) == sorted(ids)  # each ran, once

    by_call = callbacks_by_call(received)
    assert len(received) == BURST and set(by_call) == set(ids), Counter(
        r.headers.get("x-call-id") for r in received
    )
    for i, call_id in enumerate(ids):
        [request] = by_call[call_id]
        assert request.path == f"/done/{i}", request
        assert_callback(request, call_id, "tally", 200)
        assert request.body == views[call_id]["result"]["body"].encode()

    # A caller's own call id, given twice: one job, and both answers are 202.
    own_id = f"mine-{uuid.uuid4().hex}"
    first, second = (enqueue(node, "tally", b"again", {"X-Call-Id": own_id}) for _ in range(2))
    assert accepted(first, "tally") == own_id
    assert accepted(second, "tally", again=True) == own_id
    view = wait_status(node, [own_id], "finished")[own_id]
    assert result_json(view)["body"] == "again"
    time.sleep(SETTLE_S)
    assert runs(redis_client, mesh, "tally").count(own_id) == 1


# ------------------------------------------------------------------ retries and dead letters


def test_a_failing_call_is_retried_then_dead_lettered_then_redriven_once_fixed(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    policy = "    async: {retries: 2, backoff_s: [0.2], max_age_s: 60}\n"
    manifest = write_async_function(
        mesh, "flaky", failing=True, pool="{min: 1, max: 1}", extra=policy
    )
    node = mesh.start(manifest, "--node", "alpha", *ALLOW_LOCAL_CALLBACKS)
    mesh.wait_serving("flaky", "v1", [node])

    with CountingServer() as hooks:
        call_id = accepted(
            enqueue(node, "flaky", b"job", {"X-Callback-Url": f"{hooks.url}/dead"}), "flaky"
        )
        dead = wait_status(node, [call_id], "dead", 20)[call_id]
        wait_for(lambda: len(hooks.received) >= 1, 20, 0.05, "the callback of the dead call")
        time.sleep(SETTLE_S)
        received = list(hooks.received)

    assert runs(redis_client, mesh, "flaky") == [call_id] * 3  # the run and two retries
    assert dead["attempts"] == 3 and dead["retries_left"] == 0, dead
    assert "not fixed yet: run 3" in (dead["last_error"] or ""), dead  # the last run's error
    [request] = received
    assert_callback(request, call_id, "flaky", 500)

    [letter] = [
        entry for entry in dead_letters(node)["dead_letters"] if entry["call_id"] == call_id
    ]
    listing = dead_letters(node, "flaky")
    assert listing["count"] == 1 and listing["dead_letters"] == [letter], listing
    assert letter["function"] == "flaky" and letter["attempts"] == 3, letter
    assert "not fixed yet: run 3" in letter["last_error"] and letter["failed_at"], letter
    as_json = mesh.cli("dead-letters", "flaky", "--json", "--gateway", node.url, check=True)
    assert json.loads(as_json.stdout) == listing, as_json.stdout
    [row] = [
        line
        for line in mesh.cli("dead-letters", "--gateway", node.url, check=True).stdout.splitlines()
        if line.startswith(call_id)
    ]
    assert row.split()[1:2] == ["flaky"] and " ".join(letter["last_error"].split())[:40] in row

    fixed = write_async_function(mesh, "flaky", version="v2", pool="{min: 1, max: 1}", extra=policy)
    deployed = mesh.deploy(fixed, via=node)
    assert deployed.returncode == 0, deployed.stderr
    mesh.wait_serving("flaky", "v2", [node])

    reply = redrive(node, "flaky")
    assert reply.status_code == 200 and reply.json() == {"redriven": 1}, reply.text
    finished = wait_status(node, [call_id], "finished", 20)[call_id]
    assert result_json(finished) == answer(call_id, "job", version="v2")
    assert runs(redis_client, mesh, "flaky") == [call_id] * 4
    assert dead_letters(node, "flaky") == {"count": 0, "dead_letters": []}


# ------------------------------------------------------------------------------- cancel


def test_a_queued_call_can_be_canceled_and_never_runs(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    manifest = write_async_function(mesh, "slow", sleep_ms=1500, pool="{min: 1, max: 1}")
    node = mesh.start(manifest)
    mesh.wait_serving("slow", "v1", [node])

    first = accepted(enqueue(node, "slow", headers={"X-Idempotency-Key": "first"}), "slow")
    wait_status(node, [first], "started", 10)
    second = accepted(enqueue(node, "slow", headers={"X-Idempotency-Key": "second"}), "slow")
    waiting = call_status(node, second)
    assert waiting["status"] == "queued", waiting  # the one worker is busy

    reply = cancel(node, second)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"call_id": second, "status": "canceled"}
    assert call_status(node, second)["status"] == "canceled"

    # Enqueued after the canceled call: once it has run, the canceled one would have too.
    third = accepted(enqueue(node, "slow", headers={"X-Idempotency-Key": "third"}), "slow")
    wait_status(node, [first, third], "finished", 15)
    time.sleep(SETTLE_S)
    assert runs(redis_client, mesh, "slow") == ["first", "third"]
    view = call_status(node, second)
    assert view["status"] == "canceled" and view["result"] is None, view
    assert not view["started_at"], view

    finished = cancel(node, first)
    assert finished.status_code == 409, finished.text
    assert call_status(node, first)["status"] == "finished"
    again = cancel(node, second)  # canceling twice: the same answer, or "too late"
    assert (again.status_code, again.json()) == (200, reply.json()) or again.status_code == 409
    assert call_status(node, second)["status"] == "canceled"
    unknown = cancel(node, f"no-such-call-{uuid.uuid4().hex}")
    assert unknown.status_code == 404, unknown.text


def test_a_pool_scaled_to_zero_forks_a_worker_for_its_async_calls_on_the_accepting_node(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    manifest = write_async_function(mesh, "sleepy", pool="{min: 0, max: 2, idle_timeout_s: 0.5}")
    alpha = mesh.start(manifest, "--node", "alpha")
    bravo = mesh.start(None, "--node", "bravo")
    mesh.wait_serving("sleepy", "v1")  # (a sync call to each: it forks one worker)

    def at_zero() -> bool:
        return all(function_view(node, "sleepy")["replicas"] == 0 for node in (alpha, bravo))

    wait_for(at_zero, 20, 0.1, "both pools at zero")
    forked_on_bravo = function_view(bravo, "sleepy")["counters"]["spawned"]

    ids = [accepted(enqueue(alpha, "sleepy", b"wake %d" % i), "sleepy") for i in range(3)]
    views = wait_status(alpha, ids, "finished", FINISH_TIMEOUT_S)  # no sync call forked one
    assert len(runs(redis_client, mesh, "sleepy")) == 3
    assert {view["node"] for view in views.values()} == {"alpha"}, views
    time.sleep(1.5)  # (past the grace a peer at zero gives the accepting node)
    # bravo, at zero too and waiting on the same queue, did not fork for alpha's calls
    assert function_view(bravo, "sleepy")["counters"]["spawned"] == forked_on_bravo


# ---------------------------------------------------------------------------- node loss


def test_calls_started_on_a_node_killed_with_sigkill_complete_on_another_once_each(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    manifest = write_async_function(mesh, "ledger", sleep_ms=2000, pool="{min: 2, max: 2}")
    doomed = mesh.start(manifest, "--node", "alpha")
    survivor = mesh.start(None, "--node", "bravo")
    mesh.wait_serving("ledger", "v1")  # on both

    keys = [f"key-{i}-{uuid.uuid4().hex[:8]}" for i in range(6)]
    ids = [
        accepted(enqueue(survivor, "ledger", key.encode(), {"X-Idempotency-Key": key}), "ledger")
        for key in keys
    ]
    on_doomed: list[str] = []

    def started_on_doomed() -> bool:
        for call_id in ids:
            view = call_status(survivor, call_id)
            if view["status"] == "started" and view["node"] == "alpha":
                on_doomed.append(call_id)
        return bool(on_doomed)

    wait_for(started_on_doomed, 10, 0.05, "a call started on alpha")
    doomed.kill_group()
    killed_at = time.monotonic()

    views = wait_status(survivor, ids, "finished", NODE_LOSS_S)
    took_s = time.monotonic() - killed_at
    time.sleep(SETTLE_S)
    for call_id, key in zip(ids, keys, strict=True):
        view = views[call_id]
        assert view["node"] == "bravo", view  # alpha died 2 s before any of its runs ended
        assert result_json(view) == answer(call_id, key, key)
    completed = runs(redis_client, mesh, "ledger")
    assert sorted(completed) == sorted(keys), (completed, on_doomed, took_s)  # each once


# ---------------------------------------------------------------------------- lanes


def test_where_calls_run_follows_the_functions_spill(
    mesh: Mesh, redis_client: redis.Redis, redis_url: str
) -> None:
    """A pinned function's calls run on the node that accepted them; a function that may go
    to peers has its backlog drained by its peers; one that may go only to the cloud runs on
    its node or the cloud, never on a peer."""
    folders = {
        "pinned": "    spill: {to: []}\n",
        "shared": "",
        "cloudy": "    spill: {to: [cloud]}\n",
    }
    blocks = [
        write_async_function(
            mesh, name, sleep_ms=300, pool="{min: 1, max: 1}", extra=extra
        ).read_text()
        for name, extra in folders.items()
    ]
    manifest = mesh.project / "lanes.yaml"
    manifest.write_text(blocks[0] + "".join(b.split("functions:\n", 1)[1] for b in blocks[1:]))
    alpha = mesh.start(manifest, "--node", "alpha")
    mesh.start(None, "--node", "bravo")
    mesh.start(None, "--node", "cloud", "--role", "cloud")
    for name in folders:
        mesh.wait_serving(name, "v1")  # on all three
    # One call each makes the queues exist; after a round of every node's async calls
    # (once a second) each node drains the queues it may.
    first = [accepted(enqueue(alpha, name, b"first"), name) for name in folders]
    wait_status(alpha, first, "finished")
    time.sleep(2.0)

    ids = {
        name: [accepted(enqueue(alpha, name, f"{name} {i}".encode()), name) for i in range(8)]
        for name in folders
    }
    nodes = {
        name: Counter(view["node"] for view in wait_status(alpha, ids[name], "finished").values())
        for name in folders
    }
    assert set(nodes["pinned"]) == {"alpha"}, nodes
    assert set(nodes["shared"]) >= {"alpha", "bravo"}, nodes  # (and maybe the cloud)
    assert set(nodes["cloudy"]) <= {"alpha", "cloud"} and "cloud" in nodes["cloudy"], nodes
    for name in folders:
        assert len(runs(redis_client, mesh, name)) == 1 + 8, name  # each call ran once

    info = rq_info(redis_url)
    assert info.returncode == 0, info.stderr
    queues = {line.split(" ", 1)[0] for line in info.stdout.splitlines()}
    prefix = mesh.prefix
    assert {f"{prefix}.pinned@alpha", f"{prefix}.shared", f"{prefix}.cloudy@alpha"} <= queues
    assert not {f"{prefix}.pinned", f"{prefix}.cloudy"} & queues, info.stdout


# ------------------------------------------------------------------------------- rq info


def test_rq_info_lists_the_function_queue_and_the_node_workers(mesh: Mesh, redis_url: str) -> None:
    manifest = write_async_function(mesh, "tally", pool="{min: 1, max: 2}")
    node = mesh.start(manifest, "--node", "alpha")
    mesh.wait_serving("tally", "v1", [node])
    ids = [accepted(enqueue(node, "tally", b"x"), "tally") for _ in range(3)]
    wait_status(node, ids, "finished")
    queue = f"{mesh.prefix}.tally"

    info = rq_info(redis_url)
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    [queue_line] = [line for line in lines if line.split(" ", 1)[0] == queue]
    assert "0 executing, 3 finished, 0 failed" in queue_line, info.stdout
    workers = [line for line in lines if line.startswith("alpha.tally.") and queue in line]
    assert workers, info.stdout

    by_queue = rq_info(redis_url, "--by-queue", queue)
    assert by_queue.returncode == 0, by_queue.stderr
    [listed] = [line for line in by_queue.stdout.splitlines() if line.startswith(f"{queue}:")]
    assert "alpha.tally." in listed, by_queue.stdout


# ------------------------------------------------------------------------------- refusals


def test_bad_async_calls_are_refused_and_enqueue_nothing(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    manifest = write_async_function(mesh, "tally")
    node = mesh.start(manifest, "--max-body-bytes", "1024")  # no --callback-allow
    mesh.wait_serving("tally", "v1", [node])

    assert enqueue(node, "no-such-function").status_code == 404
    for url in ("http://10.1.2.3/hook", "http://127.0.0.1:9/hook", "ftp://example.com/x"):
        refused = enqueue(node, "tally", headers={"X-Callback-Url": url})
        assert refused.status_code == 400, (url, refused.status_code, refused.text)
    for bad_id in ("has space", "a" * 65, "semi;colon", "dot.ted"):
        refused = enqueue(node, "tally", headers={"X-Call-Id": bad_id})
        assert refused.status_code == 400, (bad_id, refused.status_code, refused.text)
    assert enqueue(node, "tally", b"x" * 2048).status_code == 413

    for path in ("/system/calls/x", "/system/dead-letters", "/system/dead-letters/tally"):
        unauthorized = httpx.get(node.url + path, timeout=10)
        assert unauthorized.status_code == 401, (path, unauthorized.text)
    assert cancel(node, "x", token=False).status_code == 401
    assert admin_get(node, f"/system/calls/{uuid.uuid4().hex}").status_code == 404

    good = accepted(enqueue(node, "tally", b"x" * 1024), "tally")  # at the limit
    wait_status(node, [good], "finished")
    time.sleep(SETTLE_S)
    assert runs(redis_client, mesh, "tally") == [good]  # nothing refused was run
    assert redis_client.llen(f"rq:queue:{mesh.prefix}.tally") == 0


# --------------------------------------------------------------------------- async trigger


def test_an_async_trigger_answers_202_at_once_and_the_call_runs(
    mesh: Mesh, redis_client: redis.Redis
) -> None:
    trigger = "    triggers:\n      - http: {path: /sensors/door, methods: [POST], async: true}\n"
    manifest = write_async_function(mesh, "door", sleep_ms=1000, extra=trigger)
    node = mesh.start(manifest, *ALLOW_LOCAL_CALLBACKS)
    mesh.wait_serving("door", "v1", [node])

    with CountingServer() as hooks:
        started = time.monotonic()
        reply = httpx.post(
            f"{node.url}/sensors/door",
            content=b"open",
            headers={"X-Callback-Url": f"{hooks.url}/door"},
            timeout=10,
        )
        answered_s = time.monotonic() - started
        call_id = accepted(reply, "door")
        assert answered_s < AT_ONCE_S, f"answered after {answered_s:.2f} s: not queued"
        view = wait_status(node, [call_id], "finished", FINISH_TIMEOUT_S)[call_id]
        wait_for(lambda: len(hooks.received) >= 1, 20, 0.05, "the callback")
        time.sleep(SETTLE_S)
        received = list(hooks.received)

    assert result_json(view) == answer(call_id, "open")
    assert runs(redis_client, mesh, "door") == [call_id]
    [request] = received
    assert_callback(request, call_id, "door", 200)
    assert request.body == view["result"]["body"].encode()
