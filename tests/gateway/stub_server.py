"""A tiny HTTP/1.1 server on 127.0.0.1 that answers as a test scripts it: to stand in for a
peer, a cloud node or a foreign gateway, including ones that misbehave on the wire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class Received:
    """One request as it arrived: header names lowercased, in order."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


def response(status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers or [])]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def answer(
    status: int = 200, headers: list[tuple[str, str]] | None = None, body: bytes = b"ok"
) -> Handler:
    """A handler that always gives the same answer."""

    async def handle(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(response(status, headers, body))

    return handle


@dataclass
class StubServer:
    url: str
    received: list[Received]
    handler: Handler


@asynccontextmanager
async def stub_server(handler: Handler, port: int = 0) -> AsyncIterator[StubServer]:
    """Serve on ``port`` (a free one by default) until the block ends; ``stub.handler`` may
    be swapped."""
    connections: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            while not writer.is_closing():
                request = await _read_request(reader)
                if request is None:
                    break
                stub.received.append(request)
                await stub.handler(request, writer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            connections.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    port = server.sockets[0].getsockname()[1]
    stub = StubServer(f"http://127.0.0.1:{port}", [], handler)
    try:
        yield stub
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    first, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, _ = first.split(" ", 2)
    headers = []
    for line in lines:
        key, _, value = line.partition(":")
        headers.append((key.strip().lower(), value.strip()))
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    body = await reader.readexactly(length) if length else b""
    return Received(method, target, headers, body)
