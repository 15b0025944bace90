"""The worker process: forked from the zygote with the function already imported, it runs
``init(context)`` once, says READY, then serves calls from its socket until the gateway
closes it.

Sync handlers serve one call at a time; ``async def`` handlers serve as many at once as the
gateway sends (the pool's ``concurrency``). Every way out of this module is ``os._exit``: a
worker never runs the zygote's cleanup code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, NoReturn, cast

from registry.specs import FunctionSpec
from runtime import exits
from runtime.errors import HTTPError, ProtocolError
from runtime.event import Context, Event, build_header_block
from runtime.lifeline import die_with_parent
from runtime.loader import LoadedFunction, describe_exception, format_trace
from runtime.protocol import (
    CALL_BODY,
    CALL_HEADERS,
    CALL_ID,
    CALL_METHOD,
    CALL_PATH,
    CALL_QUERY,
    HEADER,
    MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    FrameReader,
    Kind,
    Outcome,
    encode,
)
from runtime.responses import JSON_TYPE, RenderError, error_body, render

MiB = 1024 * 1024
_JSON_HEADERS = build_header_block([(b"content-type", JSON_TYPE)])
_OOM_NOTE = b"edgefaas worker: MemoryError under the memory_mb limit; exiting\n"


class SoftTimeout(BaseException):
    """Raised inside the handler when its soft timeout fires. A BaseException, so that a
    handler's ``except Exception`` does not swallow it."""


def run(
    sock: socket.socket,
    spec: FunctionSpec,
    loaded: LoadedFunction,
    zygote_pid: int,
    placed: bool = False,
) -> NoReturn:
    """Entry point in the freshly forked child. Never returns. ``placed``: the node puts the
    worker in a cgroup of its own (which limits its memory) and says START when it has."""
    code = exits.EXIT_PROTOCOL
    try:
        die_with_parent(zygote_pid)
        if placed:
            _await_start(sock)
        else:
            _limit_memory(spec.memory_mb)
        context = Context(
            function=spec.name,
            root=spec.root,
            worker_pid=os.getpid(),
            timeout_s=spec.timeout_s,
            memory_mb=spec.memory_mb,
            env=dict(spec.env),
            files=spec.files,
        )
        if not _run_init(sock, spec, loaded, context):
            code = exits.EXIT_INIT_FAILED
        elif loaded.handle_batch is not None and spec.batch is not None:
            sock.sendall(encode(Kind.READY, 0, [b"%d" % os.getpid(), b"sync"]))
            code = _serve_batches(sock, spec, loaded.handle_batch, spec.batch.max_size)
        elif loaded.is_async:
            sock.sendall(encode(Kind.READY, 0, [b"%d" % os.getpid(), b"async"]))
            code = asyncio.run(_serve_async(sock, spec, loaded.handle))
        else:
            sock.sendall(encode(Kind.READY, 0, [b"%d" % os.getpid(), b"sync"]))
            code = _serve_sync(sock, spec, loaded.handle)
    except MemoryError:
        code = exits.EXIT_OUT_OF_MEMORY
    except SystemExit:
        code = exits.EXIT_HANDLER_EXIT
    except (BrokenPipeError, ConnectionResetError):
        code = exits.EXIT_OK
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _await_start(sock: socket.socket) -> None:
    """Wait for the node's START (a frame with no fields); read nothing beyond it."""
    data = sock.recv(HEADER.size, socket.MSG_WAITALL)
    if not data:
        raise BrokenPipeError("the node closed the worker's socket before START")
    if data != encode(Kind.START, 0, []):
        raise ProtocolError(f"expected START from the node before init, got {data!r}")


def _limit_memory(memory_mb: int) -> None:
    limit = memory_mb * MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_init(
    sock: socket.socket, spec: FunctionSpec, loaded: LoadedFunction, context: Context
) -> bool:
    if loaded.init is None:
        return True
    try:
        loaded.init(context)
    except MemoryError:
        message = f"init() ran out of memory under memory_mb={spec.memory_mb}"
        sock.sendall(encode(Kind.INIT_FAILED, 0, [message.encode(), b""]))
        return False
    except Exception as exc:
        message = "init() raised " + describe_exception(exc, spec.root)
        sock.sendall(encode(Kind.INIT_FAILED, 0, [message.encode(), format_trace(exc).encode()]))
        return False
    return True


def _event(fields: list[bytes]) -> Event:
    return Event(
        fields[CALL_METHOD].decode("latin-1"),
        fields[CALL_PATH].decode("utf-8", "replace"),
        fields[CALL_QUERY],
        fields[CALL_HEADERS],
        fields[CALL_BODY],
        fields[CALL_ID].decode("latin-1"),
    )


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeout


def _serve_sync(sock: socket.socket, spec: FunctionSpec, handle: Callable[[Any], Any]) -> int:
    reader = FrameReader(sock)
    signal.signal(signal.SIGALRM, _on_alarm)
    timeout_s = spec.timeout_s
    while True:
        try:
            frame = reader.read()
        except (ProtocolError, OSError):
            return exits.EXIT_PROTOCOL
        if frame is None:
            return exits.EXIT_OK
        if frame.kind != Kind.CALL:
            return exits.EXIT_PROTOCOL
        try:
            reply = _call_sync(handle, _event(frame.fields), timeout_s, spec)
        except SoftTimeout:  # fired in the instant after the handler returned
            reply = _timeout_reply(spec)
        sock.sendall(_result_frame(frame.seq, reply, spec))


def _serve_batches(
    sock: socket.socket, spec: FunctionSpec, handle_batch: Callable[[Any], Any], max_size: int
) -> int:
    """Like :func:`_serve_sync`, but every call already waiting in the socket joins the
    first one, up to ``max_size``: the gateway writes a batch's calls back to back."""
    reader = FrameReader(sock)
    signal.signal(signal.SIGALRM, _on_alarm)
    while True:
        try:
            frame = reader.read()
            frames = [frame] if frame is not None else []
            while frames and len(frames) < max_size:
                more = reader.read_ready()
                if more is None:
                    break
                frames.append(more)
        except (ProtocolError, OSError):
            return exits.EXIT_PROTOCOL
        if not frames:
            return exits.EXIT_OK
        if any(f.kind != Kind.CALL for f in frames):
            return exits.EXIT_PROTOCOL
        events = [_event(f.fields) for f in frames]
        try:
            replies = _call_batch(handle_batch, events, spec)
        except SoftTimeout:  # fired in the instant after handle_batch returned
            replies = [_timeout_reply(spec)] * len(events)
        sock.sendall(
            b"".join(_result_frame(f.seq, r, spec) for f, r in zip(frames, replies, strict=True))
        )


def _call_batch(
    handle_batch: Callable[[Any], Any], events: list[Event], spec: FunctionSpec
) -> list[list[bytes]]:
    """One reply per event: its item of ``handle_batch``'s list (an exception there fails
    that call only), or the same failure for all when the batch as a whole fails."""
    try:
        signal.setitimer(signal.ITIMER_REAL, spec.timeout_s)
        try:
            items = handle_batch(events)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SoftTimeout:
        return [_timeout_reply(spec)] * len(events)
    except Exception as exc:
        return [_error_reply(exc, events[0], spec)] * len(events)
    if not isinstance(items, list | tuple) or len(items) != len(events):
        got = f"{len(items)} items" if isinstance(items, list | tuple) else type(items).__name__
        problem = RenderError(f"handle_batch returned {got} for a batch of {len(events)} calls")
        return [_error_reply(problem, events[0], spec)] * len(events)
    replies = []
    for event, item in zip(events, items, strict=True):
        if isinstance(item, Exception):
            replies.append(_error_reply(item, event, spec))
            continue
        try:
            status, headers, body = render(item)
        except Exception as exc:
            replies.append(_error_reply(exc, event, spec))
            continue
        replies.append([b"%d" % status, b"%d" % Outcome.OK, build_header_block(headers), body])
    return replies


def _result_frame(seq: int, reply: list[bytes], spec: FunctionSpec) -> bytes:
    try:
        return encode(Kind.RESULT, seq, reply)
    except ProtocolError:
        message = (
            f"function {spec.name} returned a response of {len(reply[-1])} bytes, more "
            f"than the {MAX_FRAME_BYTES} a worker can send"
        )
        body = error_body("function_error", message)
        return encode(
            Kind.RESULT, seq, [b"500", b"%d" % Outcome.FUNCTION_ERROR, _JSON_HEADERS, body]
        )


def _call_sync(
    handle: Callable[[Any], Any], event: Event, timeout_s: float, spec: FunctionSpec
) -> list[bytes]:
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            status, headers, body = render(handle(event))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SoftTimeout:
        return _timeout_reply(spec)
    except Exception as exc:
        return _error_reply(exc, event, spec)
    return [b"%d" % status, b"%d" % Outcome.OK, build_header_block(headers), body]


def _timeout_reply(spec: FunctionSpec) -> list[bytes]:
    message = f"function {spec.name} timed out after {spec.timeout_s:g} s"
    return [b"504", b"%d" % Outcome.SOFT_TIMEOUT, _JSON_HEADERS, error_body("timeout", message)]


def _error_reply(exc: Exception, event: Event, spec: FunctionSpec) -> list[bytes]:
    if isinstance(exc, MemoryError):
        os.write(2, _OOM_NOTE)
        os._exit(exits.EXIT_OUT_OF_MEMORY)
    if isinstance(exc, HTTPError):
        body = error_body(exc.error_code, exc.message)
        return [b"%d" % exc.http_status, b"%d" % Outcome.HANDLER_ERROR, _JSON_HEADERS, body]
    if isinstance(exc, RenderError):
        message = f"function {spec.name}: {exc}"
    else:
        message = f"function {spec.name} raised {describe_exception(exc, spec.root)}"
        print(
            f"edgefaas worker {os.getpid()} {spec.name} call {event.call_id}: {format_trace(exc)}",
            file=sys.stderr,
            flush=True,
        )
    body = error_body("function_error", message)
    return [b"500", b"%d" % Outcome.FUNCTION_ERROR, _JSON_HEADERS, body]


class _AsyncChannel(asyncio.Protocol):
    """Worker side of the socket for ``async def`` handlers: one task per call."""

    def __init__(self, spec: FunctionSpec, handle: Callable[[Any], Awaitable[Any]]) -> None:
        self.spec = spec
        self.handle = handle
        self.decoder = FrameDecoder()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ProtocolError:
            self._finish(exits.EXIT_PROTOCOL)
            return
        for frame in frames:
            if frame.kind != Kind.CALL:
                self._finish(exits.EXIT_PROTOCOL)
                return
            task = asyncio.create_task(self._call(frame))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exits.EXIT_OK)

    def _finish(self, code: int) -> None:
        if not self.closed.done():
            self.closed.set_result(code)

    async def _call(self, frame: Frame) -> None:
        event = _event(frame.fields)
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                status, headers, body = render(await self.handle(event))
            reply = [b"%d" % status, b"%d" % Outcome.OK, build_header_block(headers), body]
        except TimeoutError:
            reply = _timeout_reply(self.spec)
        except Exception as exc:
            reply = _error_reply(exc, event, self.spec)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_result_frame(frame.seq, reply, self.spec))


async def _serve_async(
    sock: socket.socket, spec: FunctionSpec, handle: Callable[[Any], Awaitable[Any]]
) -> int:
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(lambda: _AsyncChannel(spec, handle), sock=sock)
    return await channel.closed
