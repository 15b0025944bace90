"""The Forwarder against a scripted HTTP server: what a failure means for the call, and which
headers cross a hop."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import pytest

from gateway.mesh import forward
from gateway.mesh.forward import Forwarded, Forwarder, NotRun, UpstreamFailed, UpstreamTimedOut
from tests.conftest import free_port
from tests.gateway.stub_server import Received, answer, response, stub_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    forwarder = Forwarder()
    yield forwarder
    await forwarder.close()


async def send(
    forwarder: Forwarder,
    url: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"hi",
    raw_path: bytes = b"/function/echo",
    answer_s: float = 5.0,
) -> Forwarded:
    return await forwarder.send(
        "peer edge-2",
        url,
        "POST",
        raw_path,
        headers or [],
        body,
        connect_s=1.0,
        answer_s=answer_s,
    )


async def test_a_call_comes_back_with_status_body_and_the_targets_duration(
    forwarder: Forwarder,
) -> None:
    headers = [("Content-Type", "text/plain"), ("X-Duration-Seconds", "0.250000")]
    async with stub_server(answer(201, headers, b"made")) as stub:
        answer_ = await send(forwarder, stub.url, raw_path=b"/function/echo/a%20b?x=1&y=%2F")
    assert (answer_.status, answer_.body, answer_.remote_s) == (201, b"made", 0.25)
    assert (b"content-type", b"text/plain") in answer_.headers
    (request,) = stub.received
    assert (request.method, request.target, request.body) == (
        "POST",
        "/function/echo/a%20b?x=1&y=%2F",
        b"hi",
    )


async def test_a_duration_that_is_not_a_number_is_ignored(forwarder: Forwarder) -> None:
    async with stub_server(answer(200, [("X-Duration-Seconds", "soon")])) as stub:
        assert (await send(forwarder, stub.url)).remote_s is None


async def test_a_closed_port_means_the_call_did_not_run(forwarder: Forwarder) -> None:
    with pytest.raises(NotRun, match="peer edge-2 could not be reached") as caught:
        await send(forwarder, f"http://127.0.0.1:{free_port()}")
    assert caught.value.refused == ""


async def test_a_refusal_header_means_the_call_did_not_run_and_says_why(
    forwarder: Forwarder,
) -> None:
    body = json.dumps({"error": {"code": "overloaded", "message": "echo is saturated"}})
    headers = [("X-Edgefaas-Refused", "saturated"), ("Retry-After", "3")]
    async with stub_server(answer(429, headers, body.encode())) as stub:
        with pytest.raises(
            NotRun, match="peer edge-2 refused the call: echo is saturated"
        ) as caught:
            await send(forwarder, stub.url)
    assert (caught.value.refused, caught.value.retry_after_s) == ("saturated", 3)


async def test_a_refusal_with_a_plain_body_and_no_retry_hint_still_counts(
    forwarder: Forwarder,
) -> None:
    async with stub_server(answer(409, [("X-Edgefaas-Refused", "digest")], b"other")) as stub:
        with pytest.raises(NotRun, match="refused the call: other") as caught:
            await send(forwarder, stub.url)
    assert (caught.value.refused, caught.value.retry_after_s) == ("digest", 1)


async def test_an_error_without_the_refusal_header_is_passed_on_not_retried(
    forwarder: Forwarder,
) -> None:
    body = b'{"error": {"code": "overloaded", "message": "busy"}}'
    async with stub_server(answer(429, [("Retry-After", "2")], body)) as stub:
        answer_ = await send(forwarder, stub.url)
    assert (answer_.status, answer_.body) == (429, body)
    assert (b"retry-after", b"2") in answer_.headers


async def test_a_server_that_dies_mid_response_fails_the_call(forwarder: Forwarder) -> None:
    async def die(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    async with stub_server(die) as stub:
        with pytest.raises(UpstreamFailed, match="peer edge-2 failed during the call") as caught:
            await send(forwarder, stub.url)
    assert caught.value.status == 502


async def test_a_server_that_closes_without_answering_fails_the_call(
    forwarder: Forwarder,
) -> None:
    """The connection was made and the call sent: it may have run, so it is not NotRun."""

    async def hang_up(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with stub_server(hang_up) as stub:
        with pytest.raises(UpstreamFailed):
            await send(forwarder, stub.url)
    assert len(stub.received) == 1


async def test_a_server_that_does_not_answer_in_time_times_out(forwarder: Forwarder) -> None:
    async def slow(request: Received, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with stub_server(slow) as stub:
        with pytest.raises(UpstreamTimedOut, match=r"did not answer within 0\.2 s") as caught:
            await send(forwarder, stub.url, answer_s=0.2)
    assert caught.value.status == 504


async def test_a_body_that_stalls_times_out(forwarder: Forwarder) -> None:
    async def stall(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
        await writer.drain()
        await asyncio.sleep(5)

    async with stub_server(stall) as stub:
        with pytest.raises(UpstreamTimedOut):
            await send(forwarder, stub.url, answer_s=0.2)


async def test_responses_over_the_cap_are_not_passed_on(
    forwarder: Forwarder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward, "MAX_RESPONSE_BYTES", 1000)
    async with stub_server(answer(body=b"x" * 1000)) as stub:
        assert len((await send(forwarder, stub.url)).body) == 1000
        stub.handler = answer(body=b"x" * 1001)
        with pytest.raises(UpstreamFailed, match="more than 1000 bytes"):
            await send(forwarder, stub.url)


async def test_a_compressed_body_is_passed_on_as_it_was_sent(forwarder: Forwarder) -> None:
    """The body keeps its Content-Encoding header, so it must keep its encoding too."""
    packed = gzip.compress(b"hello " * 100)
    headers = [("Content-Encoding", "gzip"), ("Content-Type", "text/plain")]
    async with stub_server(answer(200, headers, packed)) as stub:
        answer_ = await send(forwarder, stub.url)
    assert (b"content-encoding", b"gzip") in answer_.headers
    assert answer_.body == packed


async def test_hop_by_hop_and_mesh_headers_are_dropped_from_the_answer(
    forwarder: Forwarder,
) -> None:
    headers = [
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Server", "edge-2"),
        ("X-Call-Id", "abc"),
        ("X-Served-By", "local"),
        ("X-Duration-Seconds", "0.1"),
        ("X-Edgefaas-Anything", "secret"),
        ("X-Custom", "kept"),
        ("Set-Cookie", "a=1"),
    ]
    async with stub_server(answer(200, headers)) as stub:
        answer_ = await send(forwarder, stub.url)
    assert sorted(answer_.headers) == [(b"set-cookie", b"a=1"), (b"x-custom", b"kept")]


async def test_hop_by_hop_and_mesh_headers_are_not_sent_on(forwarder: Forwarder) -> None:
    client = [
        (b"host", b"edge-1:8080"),
        (b"connection", b"upgrade"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"content-length", b"2"),
        (b"x-call-id", b"abc"),
        (b"x-deadline-ms", b"500"),
        (b"x-edgefaas-hop", b"edge-9"),
        (b"x-edgefaas-refused", b"saturated"),
        (b"content-type", b"text/plain"),
        (b"authorization", b"Bearer user-token"),
        (b"x-custom", b"kept"),
    ]
    kept = forward.forward_headers(client)
    assert kept == [
        (b"content-type", b"text/plain"),
        (b"authorization", b"Bearer user-token"),
        (b"x-custom", b"kept"),
    ]
    async with stub_server(answer()) as stub:
        await send(forwarder, stub.url, headers=kept)
    (request,) = stub.received
    assert request.header("x-custom") == "kept"
    assert request.header("host") == stub.url.removeprefix("http://")
    assert not {n for n in request.names() if n.startswith("x-edgefaas-")}
    assert not request.names() & {"x-call-id", "x-deadline-ms", "upgrade", "te"}


async def test_the_http_client_adds_no_headers_of_its_own(forwarder: Forwarder) -> None:
    """A function on a peer sees the headers it would see locally: no User-Agent or
    Accept-Encoding of the client library (which would also invite compressed answers)."""
    async with stub_server(answer()) as stub:
        await send(forwarder, stub.url, headers=[(b"x-custom", b"kept")])
    (request,) = stub.received
    assert request.names() == {"host", "content-length", "x-custom"}


async def test_connections_are_kept_alive_between_calls(forwarder: Forwarder) -> None:
    peers: set[object] = set()

    async def who(request: Received, writer: asyncio.StreamWriter) -> None:
        peers.add(writer.get_extra_info("peername"))
        writer.write(response(200, body=b"ok"))

    async with stub_server(who) as stub:
        for _ in range(3):
            await send(forwarder, stub.url)
    assert len(stub.received) == 3 and len(peers) == 1
