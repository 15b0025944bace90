"""A node against clients that hold on: a thousand connections that trickle their headers a
byte a second or send nothing, more connections than the node takes, and someone guessing
the admin token. The node must go on serving everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import NodeProcess, wait_for, write_manifest
from tests.integration.test_node import ECHO, StartNode, start_ready

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 1000
HEADER_TIMEOUT_S = 2.0


def address(node: NodeProcess) -> tuple[str, int]:
    host, port = node.url.removeprefix("http://").split(":")
    return host, int(port)


async def hold(node: NodeProcess, count: int, seconds: float) -> tuple[int, int, int]:
    """Open ``count`` connections: half trickle a request line a byte a second, half send
    nothing. Return how many connected, how many the node answered 408 and closed, and how
    many were still open when ``seconds`` ran out."""
    host, port = address(node)
    request = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"

    async def one(trickle: bool) -> str:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return "refused"
        try:
            async with asyncio.timeout(seconds):
                for byte in request[: 12 if trickle else 0]:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    answer = await _read_for(reader, 1.0)
                    if answer is not None:
                        return _kind(answer)
                answer = await reader.read(4096)
                return _kind(answer)
        except TimeoutError:
            return "open"
        except OSError:
            return "closed"
        finally:
            writer.close()

    outcomes = await asyncio.gather(*(one(i % 2 == 0) for i in range(count)))
    timed_out = outcomes.count("408")
    return count - outcomes.count("refused"), timed_out, outcomes.count("open")


async def _read_for(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    try:
        return await asyncio.wait_for(reader.read(4096), seconds)
    except TimeoutError:
        return None


def _kind(answer: bytes) -> str:
    return "408" if answer.startswith(b"HTTP/1.1 408") else ("closed" if not answer else "other")


def test_a_thousand_slow_or_silent_clients_do_not_stop_the_node(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_ready(
        start_node, write_manifest(tmp_path, ECHO), "--header-timeout-s", str(HEADER_TIMEOUT_S)
    )
    held: list[tuple[int, int, int]] = []
    holder = threading.Thread(
        target=lambda: held.append(asyncio.run(hold(node, SLOW_CLIENTS, 4 * HEADER_TIMEOUT_S)))
    )
    holder.start()
    time.sleep(1.0)  # the slow clients are connected and trickling
    served = 0
    with httpx.Client(base_url=node.url, timeout=10) as client:
        while holder.is_alive() and served < 200:
            response = client.post("/function/echo", content=b"still here")
            assert response.status_code == 200 and response.content == b"still here"
            served += 1
    holder.join(30)
    connected, timed_out, still_open = held[0]
    assert served >= 20  # calls went on while a thousand connections were held
    assert connected == SLOW_CLIENTS
    assert timed_out >= 0.95 * SLOW_CLIENTS, held  # answered 408 and closed by the node
    assert still_open == 0, held


def test_connections_beyond_the_limit_are_refused_at_once_and_the_rest_served(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_ready(start_node, write_manifest(tmp_path, ECHO), "--max-connections", "32")
    sockets = [socket.create_connection(address(node), timeout=5) for _ in range(40)]
    try:
        refused = 0
        for sock in sockets:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                refused += sock.recv(4096).startswith(b"HTTP/1.1 503")
        assert refused >= 8  # the connections beyond 32 got 503 without asking anything
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: httpx.get(node.url + "/healthz", timeout=5).status_code == 200, 10)


def test_guessing_the_admin_token_is_refused_without_locking_out_the_admin(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_ready(start_node, write_manifest(tmp_path, ECHO), "--login-failures", "5")
    with httpx.Client(base_url=node.url, timeout=10) as client:
        wrong = {"Authorization": "Bearer not-the-token"}
        statuses = [client.get("/system/info", headers=wrong).status_code for _ in range(8)]
        assert statuses == [403] * 5 + [429] * 3
        refused = client.get("/system/info", headers=wrong)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"]["code"] == "too_many_logins"
        assert client.get("/system/info").status_code == 401  # no token: no attempt, 401
        right = client.get("/system/info", headers=node.admin_headers())
        assert right.status_code == 200  # the admin is never locked out
