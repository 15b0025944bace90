"""A real node (`edgefaas up`) over real HTTP: the call path, the admin API, the pools'
failure handling (crashes, timeouts, functions that cannot start), autoscaling, overload,
metrics and probes.

Functions come from ``tests/fixtures``; each test writes the small manifest it needs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import NodeProcess, wait_for, write_manifest

pytestmark = pytest.mark.slow

StartNode = Callable[..., NodeProcess]

ECHO = """\
  echo:
    handler: tests.fixtures.handlers:echo
"""


# ------------------------------------------------------------------------------- helpers


def pool(node: NodeProcess, name: str) -> dict[str, Any]:
    """The function's pool as ``GET /system/functions/{name}`` reports it."""
    response = httpx.get(
        f"{node.url}/system/functions/{name}", headers=node.admin_headers(), timeout=10
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def start_ready(start_node: StartNode, manifest: Path, *args: str, **kwargs: Any) -> NodeProcess:
    """A node whose pools all serve at least their ``min`` workers (/readyz answers 200)."""
    node = start_node(manifest, *args, **kwargs)

    def ready() -> bool:
        return httpx.get(f"{node.url}/readyz", timeout=5).status_code == 200

    wait_for(ready, what="/readyz to answer 200")
    return node


def assert_call_headers(response: httpx.Response) -> None:
    """Every response to a call says which call it was, who served it and how long it took."""
    assert response.headers.get("x-call-id")
    assert response.headers.get("x-served-by") == "local"
    assert float(response.headers["x-duration-seconds"]) >= 0


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> str:
    """A JSON error ``{"error": {"code", "message"}}`` with ``status``; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert {"code", "message"} <= set(error)
    assert error["code"] == code, error
    message: str = error["message"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` in a thread; the list receives its response (or the exception)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # reported by the test that reads ``outcome``
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def open_upload(node: NodeProcess, head: bytes) -> socket.socket:
    """A raw connection with a request head sent; the test sends (some of) the body."""
    address = urlsplit(node.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    sock.sendall(head)
    return sock


def response_head(sock: socket.socket, wait_s: float) -> bytes:
    """The response head the node has sent within ``wait_s`` (empty if none)."""
    sock.settimeout(wait_s)
    received = b""
    while b"\r\n\r\n" not in received:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    return received


CHUNKED_UPLOAD = (
    b"POST /function/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
)


BASIC = (
    ECHO
    + """\
  whoami:
    handler: tests.fixtures.handlers:whoami
    triggers:
      - http: {path: /hooks/door, methods: [POST, PUT]}
"""
)


@pytest.fixture
def basic_node(start_node: StartNode, tmp_path: Path) -> NodeProcess:
    """echo and whoami (with a trigger path), and a 1024-byte body limit."""
    return start_ready(start_node, write_manifest(tmp_path, BASIC), "--max-body-bytes", "1024")


# ------------------------------------------------------------------------------- calls


def test_calls_carry_call_ids_and_refuse_bad_ones(basic_node: NodeProcess) -> None:
    with basic_node.client() as client:
        echoed = client.post("/function/echo", content=b"hello, edge \x00\xff")
        given = client.get("/function/whoami", headers={"X-Call-Id": "sensor-7.call:42_a"})
        first = client.get("/function/whoami")
        second = client.get("/function/whoami")
        invalid = client.get("/function/whoami", headers={"X-Call-Id": "not valid!"})
        too_long = client.get("/function/whoami", headers={"X-Call-Id": "x" * 65})
        unknown = client.post("/function/no-such-function", content=b"x")

    assert echoed.status_code == 200
    assert echoed.content == b"hello, edge \x00\xff"
    assert given.headers["x-call-id"] == "sensor-7.call:42_a"
    assert given.json()["call_id"] == "sensor-7.call:42_a"  # the function sees the same id
    for response in (first, second):
        assert response.json()["call_id"] == response.headers["x-call-id"]
    assert first.headers["x-call-id"] != second.headers["x-call-id"]
    for response in (echoed, given, first, second):
        assert response.status_code == 200
        assert_call_headers(response)
    for response in (invalid, too_long):
        assert_error(response, 400, "bad_request", "X-Call-Id")
        assert_call_headers(response)
    assert_error(unknown, 404, "not_found", "no-such-function")
    assert_call_headers(unknown)


def test_paths_reach_the_handler_and_triggers_refuse_other_methods(
    basic_node: NodeProcess,
) -> None:
    with basic_node.client() as client:
        sub_path = client.delete("/function/whoami/items/7?force=yes")
        triggered = client.post("/hooks/door?open=1", content=b"{}")
        refused = client.get("/hooks/door")

    seen = sub_path.json()
    assert (seen["method"], seen["path"], seen["query"]) == ("DELETE", "/items/7", {"force": "yes"})
    seen = triggered.json()
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/hooks/door", {"open": "1"})
    assert_call_headers(triggered)
    assert_error(refused, 405, "method_not_allowed", "GET")
    assert [m.strip() for m in refused.headers["allow"].split(",")] == ["POST", "PUT"]
    assert_call_headers(refused)


# ------------------------------------------------------------------------------- body limit


def test_body_over_the_limit_is_a_413_with_or_without_content_length(
    basic_node: NodeProcess,
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"b" * 300

    with basic_node.client() as client:
        at_limit = client.post("/function/echo", content=b"a" * 1024)
        over = client.post("/function/echo", content=b"a" * 1025)
        streamed = client.post("/function/echo", content=chunks())
    assert at_limit.status_code == 200
    assert len(at_limit.content) == 1024
    assert_error(over, 413, "payload_too_large", "1025", "1024")
    assert_call_headers(over)
    assert_error(streamed, 413, "payload_too_large", "1024")
    assert_call_headers(streamed)

    # The 413 comes before the client has sent the body: here it never sends all of it.
    huge = b"POST /function/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n"
    with open_upload(basic_node, huge) as sock:  # refused on the header alone
        refused_at_once = response_head(sock, wait_s=10)
    assert refused_at_once.startswith(b"HTTP/1.1 413"), refused_at_once
    assert b"x-served-by: local" in refused_at_once.lower()

    refused_midway = b""
    with open_upload(basic_node, CHUNKED_UPLOAD) as sock:
        for _ in range(30):  # chunks trickle in, at most 9000 bytes, and the body never ends
            try:
                sock.sendall(b"12c\r\n" + b"c" * 300 + b"\r\n")
            except OSError:  # refused and closed between two chunks: read the answer
                refused_midway = response_head(sock, wait_s=1)
                break
            refused_midway = response_head(sock, wait_s=0.2)
            if refused_midway:
                break
    assert refused_midway.startswith(b"HTTP/1.1 413"), refused_midway


def test_413_for_a_first_chunk_over_the_limit_comes_without_more_data(
    basic_node: NodeProcess,
) -> None:
    with open_upload(basic_node, CHUNKED_UPLOAD) as sock:
        sock.sendall(b"800\r\n" + b"c" * 0x800 + b"\r\n")  # 2048 bytes; then the client waits
        response = response_head(sock, wait_s=1)
    assert response.startswith(b"HTTP/1.1 413"), response


def test_a_body_cut_short_by_a_disconnect_never_reaches_the_function(
    basic_node: NodeProcess,
) -> None:
    def calls() -> int:
        response = httpx.get(
            f"{basic_node.url}/system/functions/echo", headers=basic_node.admin_headers()
        )
        count: int = response.json()["counters"]["calls"]
        return count

    before = calls()
    head = b"POST /function/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
    with open_upload(basic_node, head) as sock:
        sock.sendall(b"only ten b")
    assert httpx.post(f"{basic_node.url}/function/echo", content=b"after").content == b"after"
    assert calls() == before + 1, "only the complete call may run"


# ------------------------------------------------------------------------------- admin API


def test_admin_api_needs_the_token_and_lists_pools(basic_node: NodeProcess) -> None:
    token = basic_node.token
    with basic_node.client() as client:
        assert client.post("/function/echo", content=b"x").status_code == 200
        missing = client.get("/system/functions")
        wrong = client.get("/system/functions", headers={"Authorization": "Bearer nope"})
        wrong_scheme = client.get("/system/functions", headers={"Authorization": f"Basic {token}"})
        scale_without = client.post("/system/scale-function/echo", json={"replicas": 2})
        listed = client.get("/system/functions", headers=basic_node.admin_headers())
        one = client.get("/system/functions/echo", headers=basic_node.admin_headers())
        unknown = client.get("/system/functions/nope", headers=basic_node.admin_headers())

    assert_error(missing, 401, "unauthorized", "Bearer")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_error(wrong, 403, "forbidden")
    assert_error(wrong_scheme, 401, "unauthorized")
    assert_error(scale_without, 401, "unauthorized")
    assert listed.status_code == 200
    assert sorted(f["name"] for f in listed.json()) == ["echo", "whoami"]
    assert all(f["state"] == "running" and f["replicas"] == 1 for f in listed.json())
    assert one.status_code == 200
    state = one.json()
    assert (state["name"], state["state"], state["min"], state["max"]) == ("echo", "running", 1, 4)
    assert state["workers"]["ready"] == 1
    assert len(state["worker_pids"]) == 1
    assert state["zygote_pid"] > 0
    assert (state["counters"]["calls"], state["counters"]["ok"]) == (1, 1)
    assert state["last_error"] is None
    assert_error(unknown, 404, "not_found", "nope")


def test_scale_refuses_bad_bodies_with_messages(basic_node: NodeProcess) -> None:
    takes = "the body takes {replicas} or {min, max}"
    cases: list[tuple[bytes, str, int]] = [
        (b"not json", "not valid JSON", 400),
        (b"[3]", "expected a JSON object", 400),
        (b'{"replicas": -1}', "body.replicas", 400),
        (b'{"replicas": "3"}', "body.replicas", 400),
        (b'{"replicas": true}', "body.replicas", 400),
        (b'{"replicas": 1001}', "body.replicas", 400),
        (b'{"min": 2, "max": 1}', "body.max: expected an integer ≥ min (2), got 1", 422),
        (b'{"min": 0, "max": 0}', "body.max", 400),
        (b'{"min": 1}', f"body.max: required ({takes})", 400),
        (b'{"replicas": 1, "max": 2}', f"body.max: unknown ({takes})", 400),
        (b'{"workers": 2}', "body.workers: unknown", 400),
        (b'{"replicas": 2, "serviceName": "other"}', "body.serviceName", 422),
    ]
    with basic_node.client(headers=basic_node.admin_headers()) as client:
        for body, words, status in cases:
            response = client.post("/system/scale-function/echo", content=body)
            code = "bad_request" if status == 400 else "invalid"
            assert_error(response, status, code, words)
        unknown = client.post("/system/scale-function/nope", json={"replicas": 1})
    assert_error(unknown, 404, "not_found", "nope")
    state = pool(basic_node, "echo")
    assert (state["min"], state["max"], state["replicas"]) == (1, 4, 1)


def test_scale_sets_the_worker_count(start_node: StartNode, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path,
        "  echo:\n    handler: tests.fixtures.handlers:echo\n    pool: {idle_timeout_s: 1}\n",
    )
    node = start_ready(start_node, manifest)
    url = "/system/scale-function/echo"
    with node.client(headers=node.admin_headers()) as client:
        three = client.post(url, json={"replicas": 3})
        assert three.status_code == 202, three.text
        assert (three.json()["min"], three.json()["max"]) == (3, 3)
        wait_for(
            lambda: pool(node, "echo")["availableReplicas"] == 3, what="3 workers serving echo"
        )
        assert len(pool(node, "echo")["worker_pids"]) == 3

        bounds = client.post(url, json={"min": 0, "max": 1})
        assert bounds.status_code == 202, bounds.text
        assert (bounds.json()["min"], bounds.json()["max"]) == (0, 1)
        wait_for(lambda: pool(node, "echo")["replicas"] <= 1, what="echo down to max=1")
        wait_for(
            lambda: pool(node, "echo")["replicas"] == 0,
            what="echo down to min=0 after its 1 s idle window",
        )

    with node.client() as client:
        cold = client.post("/function/echo", content=b"wake up")
    assert cold.status_code == 200
    assert cold.content == b"wake up"


# ------------------------------------------------------------------------------- failures


CRASHES = [  # function, query, how the 502 must describe the crash
    ("segv", "", "SIGSEGV"),
    ("exits", "?code=7", "exited with code 7"),
    ("killed", "", "SIGKILL"),
    ("hog", "?mib=512", "ran out of memory (hit its memory_mb limit of 128 MiB)"),
]


def test_worker_crash_mid_call_is_a_502_and_the_worker_is_replaced(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path,
        "  segv:\n    handler: tests.fixtures.handlers:segfault\n"
        "  exits:\n    handler: tests.fixtures.handlers:exit_hard\n"
        "  killed:\n    handler: tests.fixtures.handlers:kill_self\n"
        "  hog:\n    handler: tests.fixtures.handlers:hog_memory\n    memory_mb: 128\n",
    )
    node = start_ready(start_node, manifest)
    for name, query, words in CRASHES:
        [crashed_pid] = pool(node, name)["worker_pids"]
        with node.client() as client:
            response = client.post(f"/function/{name}{query}")
        assert_error(response, 502, "worker_crashed", words, str(crashed_pid), name)
        assert_call_headers(response)

        def replaced(name: str = name, crashed_pid: int = crashed_pid) -> bool:
            state = pool(node, name)
            return state["workers"]["ready"] == 1 and crashed_pid not in state["worker_pids"]

        wait_for(replaced, what=f"a new worker for the crashed one of {name}")
        assert pool(node, name)["counters"]["crashes"] == 1

    with node.client() as client:  # the next calls are served
        after_segfault = client.post("/function/segv?crash=0")
        after_hog = client.post("/function/hog?mib=1")
    assert after_segfault.status_code == 200
    assert after_segfault.content == b"spared"
    assert after_hog.status_code == 200
    assert after_hog.json() == {"allocated_mib": 1}


def test_timeouts_are_504s_soft_keeps_the_worker_hard_replaces_it(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path,
        "  slow:\n    handler: tests.fixtures.handlers:sleep_for\n"
        "    timeout_s: 1\n    pool: {min: 1, max: 1}\n"
        "  stuck:\n    handler: tests.fixtures.handlers:ignore_timeout\n"
        "    timeout_s: 1\n    pool: {min: 1, max: 1}\n",
    )
    node = start_ready(start_node, manifest)
    [stuck_before] = pool(node, "stuck")["worker_pids"]
    with node.client() as client:
        slow_before = client.post("/function/slow?ms=1").json()["pid"]

    def timed(path: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = httpx.post(node.url + path, timeout=30)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(2) as executor:  # both at once, to keep the test short
        soft_call = executor.submit(timed, "/function/slow?ms=3000")
        hard_call = executor.submit(timed, "/function/stuck?s=30")
        soft, soft_s = soft_call.result()
        hard, hard_s = hard_call.result()
    with node.client() as client:
        slow_after = client.post("/function/slow?ms=1")
        stuck_after = client.post("/function/stuck?s=0")

    # soft: the handler is interrupted inside its worker, which serves on
    assert_error(soft, 504, "timeout", "timed out after 1 s")
    assert_call_headers(soft)
    assert soft_s < 3.0, "the soft timeout did not interrupt the 3 s handler"
    assert slow_after.status_code == 200
    assert slow_after.json()["pid"] == slow_before
    # hard: the handler blocks the soft timeout, so the supervisor kills its worker
    assert hard_s < 1 + 1 + 5  # timeout_s + the 1 s kill grace + a margin for a busy machine
    assert_error(hard, 504, "timeout", "killed")
    assert_call_headers(hard)
    assert stuck_after.status_code == 200
    assert stuck_after.content == b"finished"
    stuck = pool(node, "stuck")
    assert stuck_before not in stuck["worker_pids"]
    assert len(stuck["worker_pids"]) == 1

    slow_counters = pool(node, "slow")["counters"]
    assert (slow_counters["soft_timeouts"], slow_counters["hard_timeouts"]) == (1, 0)
    assert stuck["counters"]["hard_timeouts"] == 1


def test_functions_that_cannot_start_back_off_then_stay_fatal(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path,
        "  noimport:\n    handler: tests.fixtures.fail_import:handle\n"
        "  noinit:\n    handler: tests.fixtures.crash_on_init:handle\n" + ECHO,
    )
    node = start_node(manifest)
    for state, timeout_s in (("backoff", 10), ("fatal", 15)):
        for name in ("noimport", "noinit"):
            wait_for(
                lambda name=name, state=state: pool(node, name)["state"] == state,
                timeout_s,
                what=f"{name} in {state}",
            )

    noinit = pool(node, "noinit")
    assert "KeyError" in noinit["last_error"]["message"]
    assert "model_path" in noinit["last_error"]["message"]
    assert pool(node, "noimport")["last_error"]["message"]
    failures = {
        name: pool(node, name)["counters"]["start_failures"] for name in ("noimport", "noinit")
    }
    assert all(count >= 2 for count in failures.values()), failures

    with node.client() as client:
        init_call = client.post("/function/noinit")
        import_call = client.post("/function/noimport")
        healthy = client.post("/function/echo", content=b"still here")
        ready = client.get("/readyz")
        alive = client.get("/healthz")
    assert_error(init_call, 503, "unavailable", "noinit", "KeyError")
    assert_call_headers(init_call)
    assert_error(import_call, 503, "unavailable", "noimport", "cannot start")
    assert healthy.content == b"still here"
    assert ready.status_code == 503
    assert ready.json()["functions"] == {"noimport": "fatal", "noinit": "fatal", "echo": "running"}
    assert alive.status_code == 200

    time.sleep(1.5)  # no respawn loop: nothing more is tried once FATAL
    for name, count in failures.items():
        state = pool(node, name)
        assert state["state"] == "fatal"
        assert state["counters"]["start_failures"] == count, name
        assert state["worker_pids"] == []


def test_import_failure_message_names_the_missing_module_once(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path, "  noimport:\n    handler: tests.fixtures.fail_import:handle\n"
    )
    node = start_node(manifest)
    wait_for(lambda: pool(node, "noimport")["last_error"] is not None, what="a start failure")
    with node.client() as client:
        response = client.post("/function/noimport")
    message = assert_error(response, 503, "unavailable", "definitely_not_an_installed_module")
    assert message.count("cannot start") == 1, message
    assert "definitely_not_an_installed_module" in pool(node, "noimport")["last_error"]["message"]


def test_min_0_pool_starts_a_worker_for_the_first_call_with_the_function_env(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path,
        "  whoami:\n    handler: tests.fixtures.handlers:whoami\n"
        "    env: {FIXTURE_ENV: from-the-manifest}\n    pool: {min: 0, max: 2}\n",
    )
    node = start_ready(start_node, manifest, env={"EDGEFAAS_LOG_LEVEL": "info"})
    assert pool(node, "whoami")["replicas"] == 0
    with node.client() as client:
        assert client.get("/readyz").status_code == 200
        response = client.get("/function/whoami")
        metrics = client.get("/metrics").text
    assert response.status_code == 200
    seen = response.json()
    assert seen["inits"] == 1
    assert seen["env"] == "from-the-manifest"
    assert seen["secret_seen"] is False  # EDGEFAAS_ADMIN_TOKEN and the rest stay in the gateway
    assert pool(node, "whoami")["availableReplicas"] == 1
    assert 'edgefaas_cold_start_seconds_count{function="whoami"} 1.0' in metrics


# ------------------------------------------------------------------------------- load


def test_pool_scales_up_under_a_burst_and_back_down_when_idle(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path,
        "  slow:\n    handler: tests.fixtures.handlers:sleep_for\n"
        "    pool: {min: 1, max: 3, idle_timeout_s: 1, max_queue_wait_ms: 20000}\n",
    )
    node = start_ready(start_node, manifest)
    seen_workers: list[int] = []
    with ThreadPoolExecutor(6) as executor:
        calls = [
            executor.submit(httpx.post, f"{node.url}/function/slow?ms=500", timeout=30)
            for _ in range(6)
        ]
        while not all(call.done() for call in calls):
            seen_workers.append(pool(node, "slow")["replicas"])
            time.sleep(0.05)
        responses = [call.result() for call in calls]

    assert [r.status_code for r in responses] == [200] * 6
    assert max(seen_workers) > 1, seen_workers
    assert max(seen_workers) <= 3, seen_workers
    assert len({r.json()["pid"] for r in responses}) > 1
    wait_for(lambda: pool(node, "slow")["replicas"] == 1, what="the pool back to min=1")
    assert pool(node, "slow")["counters"]["retired"] >= 1


def test_full_queue_is_a_429_with_retry_after(start_node: StartNode, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path,
        "  slow:\n    handler: tests.fixtures.handlers:sleep_for\n"
        "    pool: {min: 1, max: 1, queue_max: 1, max_queue_wait_ms: 20000}\n",
    )
    node = start_ready(start_node, manifest)
    url = f"{node.url}/function/slow"
    busy, busy_outcome = in_background(lambda: httpx.post(url + "?ms=1500", timeout=30))
    wait_for(lambda: pool(node, "slow")["in_flight"] == 1, what="the worker busy")
    queued, queued_outcome = in_background(lambda: httpx.post(url + "?ms=1", timeout=30))
    wait_for(lambda: pool(node, "slow")["queue_depth"] == 1, what="one call queued")

    refused = httpx.post(url + "?ms=1", timeout=30)
    message = assert_error(refused, 429, "overloaded", "saturated")
    assert "slow" in message
    assert refused.json()["error"]["reason"] == "saturated"
    assert "1 calls already wait for a worker" in message
    assert int(refused.headers["retry-after"]) >= 1
    assert_call_headers(refused)

    busy.join(30)
    queued.join(30)
    assert [r.status_code for r in busy_outcome + queued_outcome] == [200, 200]
    assert pool(node, "slow")["counters"]["saturated"] == 1


def test_call_that_waits_past_max_queue_wait_is_a_429(
    start_node: StartNode, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path,
        "  slow:\n    handler: tests.fixtures.handlers:sleep_for\n"
        "    pool: {min: 1, max: 1, max_queue_wait_ms: 200}\n",
    )
    node = start_ready(start_node, manifest)
    busy, busy_outcome = in_background(
        lambda: httpx.post(f"{node.url}/function/slow?ms=1200", timeout=30)
    )
    wait_for(lambda: pool(node, "slow")["in_flight"] == 1, what="the worker busy")

    refused = httpx.post(f"{node.url}/function/slow?ms=1", timeout=30)
    assert_error(refused, 429, "overloaded", "200 ms")
    assert int(refused.headers["retry-after"]) >= 1
    assert_call_headers(refused)
    assert busy.is_alive(), "the 429 should come long before the busy call ends"
    busy.join(30)
    assert [r.status_code for r in busy_outcome] == [200]


# ------------------------------------------------------------------------------- observability


def test_metrics_probes_and_openapi(basic_node: NodeProcess) -> None:
    with basic_node.client() as client:
        client.post("/function/echo", content=b"one")
        client.post("/function/echo", content=b"two")
        client.post("/function/echo", content=b"x" * 2000)  # 413
        client.post("/function/nobody-home")
        metrics = client.get("/metrics")
        alive = client.get("/healthz")
        ready = client.get("/readyz")
        openapi = client.get("/openapi.json")
        unknown = client.get("/no/such/route")

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'gateway_function_invocation_total{code="200",function_name="echo"} 2.0' in text
    assert 'gateway_function_invocation_total{code="413",function_name="echo"} 1.0' in text
    assert 'gateway_functions_seconds_count{function_name="echo"} 3.0' in text
    assert 'edgefaas_worker_spawn_seconds_count{function="echo"} 1.0' in text
    assert "nobody-home" not in text  # unknown names do not grow the label set

    assert alive.status_code == 200
    assert alive.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["functions"] == {"echo": "running", "whoami": "running"}
    assert ready.json()["mesh"]["degraded"] is False
    assert openapi.status_code == 200
    document = json.loads(openapi.content)
    assert document["openapi"].startswith("3.")
    for path in ("/system/functions", "/system/scale-function/{name}", "/function/{name}"):
        assert path in document["paths"], path
    assert_error(unknown, 404, "not_found")
