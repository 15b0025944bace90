"""Open-loop load: calls issued on a fixed schedule at a target rate, whatever the answers.

A closed-loop client (wrk, :mod:`bench.load`) sends the next request when an answer comes
back, so a server that slows down is offered less load — the opposite of a burst of camera
frames. Here call ``i`` is due at ``start + i / rate``; it goes out on a free keep-alive
connection, or a new one while fewer than ``max_connections`` are open, or waits for one. Its
latency counts from when it was due, not from when it went out, so a late client or a full
pool shows in the latency instead of hiding it (coordinated omission).

Raw HTTP/1.1 over asyncio streams on uvloop: httpx costs too much CPU per call to drive a
mesh that shares two cores with it. Only 127.0.0.1 targets are accepted; the count of calls
is bounded by rate × duration, and calls not answered ``drain_s`` after the last one was due
are cut off and counted as transport errors.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop

IDLE_S = 4.0  # a connection idle this long is not reused: servers close them at 5 s
NO_ANSWER = 0  # the status of a call that got no HTTP answer (transport error, cut off)
MAX_CALLS = 100_000

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True, slots=True)
class Answer:
    """One call: its status (``NO_ANSWER`` if none), ``X-Served-By``, seconds from when it
    was due to its whole answer, and seconds it went out late (client lag)."""

    status: int
    served_by: str
    latency_s: float
    late_s: float


@dataclass(frozen=True, slots=True)
class Run:
    """The answers of one schedule, and how long it took from the first due call to the
    last answer (at least the schedule's length)."""

    rate_per_s: float
    answers: list[Answer]
    elapsed_s: float
    connections: int  # opened during the run


class ProtocolError(Exception):
    """An answer this client does not read (no Content-Length, a malformed head)."""


class Connections:
    """Keep-alive connections to one host and port, opened as needed up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.opened = 0
        self._open = 0
        self._idle: list[tuple[Stream, float]] = []  # with when each went idle
        self._waiting: deque[asyncio.Future[Stream | None]] = deque()

    async def take(self) -> Stream:
        while self._idle:
            stream, since = self._idle.pop()
            if time.monotonic() - since < IDLE_S:
                return stream
            stream[1].close()  # the server may close it any moment now: not for a call
            self._open -= 1
        if self._open < self.limit:
            self._open += 1
            self.opened += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._open -= 1
                raise
        waiter: asyncio.Future[Stream | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        handed = await waiter
        return handed if handed is not None else await self.take()

    def give_back(self, stream: Stream, reusable: bool) -> None:
        """Return a connection after a call; one that may not be reused is closed, and its
        place goes to the next caller waiting (who opens a new one)."""
        if not reusable:
            stream[1].close()
            self._open -= 1
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(stream if reusable else None)
                return
        if reusable:
            self._idle.append((stream, time.monotonic()))

    async def warm(self, count: int) -> None:
        """Open ``count`` connections ahead of the schedule."""
        streams = [await self.take() for _ in range(min(count, self.limit))]
        for stream in streams:
            self.give_back(stream, True)

    def close(self) -> None:
        for (_, writer), _ in self._idle:
            writer.close()
        self._idle.clear()


class OpenLoop:
    """Calls ``POST url`` with ``body`` on schedules of fixed rates (one :meth:`run` each)."""

    def __init__(
        self, url: str, body: bytes, max_connections: int = 256, drain_s: float = 5.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"open-loop load only targets http://127.0.0.1:PORT, not {url}")
        self.host, self.port = parts.hostname, parts.port
        self.max_connections = max_connections
        self.drain_s = drain_s
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.request = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def run(self, rate_per_s: float, duration_s: float, warm_connections: int = 8) -> Run:
        """Offer ``rate_per_s`` calls a second for ``duration_s`` seconds (blocks)."""
        count = round(rate_per_s * duration_s)
        if not 0 < count <= MAX_CALLS:
            raise ValueError(f"{count} calls: expected 1 to {MAX_CALLS} per run")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(self._run(rate_per_s, count, warm_connections))

    async def _run(self, rate_per_s: float, count: int, warm: int) -> Run:
        pool = Connections(self.host, self.port, self.max_connections)
        await pool.warm(warm)
        loop = asyncio.get_running_loop()
        answers: list[Answer | None] = [None] * count
        start = time.perf_counter() + 0.01
        tasks = []
        for i in range(count):
            due = start + i / rate_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(self._call(pool, due, answers, i)))
        end = start + count / rate_per_s
        left_s = max(0.0, end - time.perf_counter()) + self.drain_s
        _, pending = await asyncio.wait(tasks, timeout=left_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        pool.close()
        cut_at = time.perf_counter()
        done = [
            a or Answer(NO_ANSWER, "", cut_at - (start + i / rate_per_s), 0.0)
            for i, a in enumerate(answers)
        ]
        last = max(start + i / rate_per_s + a.latency_s for i, a in enumerate(done))
        return Run(rate_per_s, done, max(last, end) - start, pool.opened)

    async def _call(
        self, pool: Connections, due: float, answers: list[Answer | None], i: int
    ) -> None:
        """Call once; on a transport error record ``NO_ANSWER``. A call cut off (cancelled)
        records nothing: the run does."""
        late_s = time.perf_counter() - due
        stream = None
        keep = False
        try:
            stream = await pool.take()
            status, served_by, keep = await self._exchange(stream)
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError, ProtocolError):
            status, served_by = NO_ANSWER, ""
        finally:
            if stream is not None:
                pool.give_back(stream, keep)
        answers[i] = Answer(status, served_by, time.perf_counter() - due, late_s)

    async def _exchange(self, stream: Stream) -> tuple[int, str, bool]:
        """Send the request, read the answer: status, X-Served-By, connection reusable."""
        reader, writer = stream
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 ") or len(lines[0]) < 12:
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:40]!r}")
        status = int(lines[0][9:12])
        length, served_by, keep = -1, "", True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-served-by":
                served_by = value.strip().decode("latin-1")
            elif name == b"connection":
                keep = value.strip().lower() != b"close"
        if length < 0:
            raise ProtocolError("an answer without Content-Length")
        await reader.readexactly(length)
        return status, served_by, keep
