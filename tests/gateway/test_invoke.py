"""The call path's request checks, on a node's app in-process (the node is built, not
started: these checks come before any function is looked for)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.node import Node
from gateway.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    node = Node(Settings(node="edge-1", data_dir=tmp_path, call_log=False), None)
    transport = httpx.ASGITransport(app=create_app(node))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://edge-1") as client:
            yield client
    finally:
        await node.close()


@pytest.mark.parametrize("value", ["0", "-5", "abc", "99999999", "3600001", "", "5.0", "+5"])
async def test_a_malformed_deadline_is_a_400_naming_the_header(
    client: httpx.AsyncClient, value: str
) -> None:
    reply = await client.post("/function/echo", headers={"X-Deadline-Ms": value}, content=b"hi")
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("X-Deadline-Ms: expected a whole number of milliseconds")
    assert f"got {value!r}" in error["message"]
    assert reply.headers["x-served-by"] == "local"


@pytest.mark.parametrize("value", ["1", "250", "3600000"])
async def test_a_well_formed_deadline_passes_the_check(
    client: httpx.AsyncClient, value: str
) -> None:
    reply = await client.post("/function/echo", headers={"X-Deadline-Ms": value}, content=b"hi")
    assert reply.status_code == 404, "the call got past the header check to the lookup"


async def test_a_forwarded_call_for_a_function_not_here_is_refused_so_the_sender_goes_on(
    client: httpx.AsyncClient,
) -> None:
    reply = await client.post("/function/echo", headers={"X-Edgefaas-Hop": "edge-2"})
    assert reply.status_code == 404
    assert reply.headers["x-edgefaas-refused"] == "not_found"
    plain = await client.post("/function/echo")
    assert plain.status_code == 404 and "x-edgefaas-refused" not in plain.headers


@pytest.mark.parametrize(
    "path", ["/function/echo/%2e%2e/system/info", "/function/echo/%2e/x", "/function/a/%2E%2E"]
)
async def test_a_path_with_dot_segments_is_a_400(client: httpx.AsyncClient, path: str) -> None:
    reply = await client.post(path, content=b"hi")
    assert reply.status_code == 400
    assert "may not contain . or .. segments" in reply.json()["error"]["message"]
