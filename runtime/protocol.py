"""The worker wire protocol: length-prefixed frames of byte fields over a Unix stream socket.

A frame is a fixed header ``<IBIH`` — payload length (bytes after the header), kind, sequence
number, field count — then one ``u32`` length per field, then the fields back to back. No
field is parsed until someone asks for it, and encoding a frame is one ``struct.pack`` and one
``join``. Numbers travel as ASCII digits in their own field.

Frames from the gateway to a worker: ``START`` once, first, for a sandboxed worker (the node
has put it in its cgroup: only then may ``init`` allocate), then ``CALL``. From a worker:
``READY`` once after ``init``, ``INIT_FAILED`` instead if ``init`` raised, then one ``RESULT``
per ``CALL`` (same ``seq``).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from enum import IntEnum
from functools import lru_cache
from typing import NamedTuple

from runtime.errors import ProtocolError

HEADER = struct.Struct("<IBIH")
MAX_FRAME_BYTES = 256 * 1024 * 1024


class Kind(IntEnum):
    CALL = 1
    RESULT = 2
    READY = 3
    INIT_FAILED = 4
    START = 5


class Outcome(IntEnum):
    """How a call ended inside the worker (travels in ``RESULT``)."""

    OK = 0
    HANDLER_ERROR = 1  # the handler raised HTTPError: the caller's fault, or the function's choice
    FUNCTION_ERROR = 2  # the handler raised anything else, or returned something unusable
    SOFT_TIMEOUT = 3  # the soft timeout interrupted the handler; the worker lives on


class Frame(NamedTuple):
    kind: int
    seq: int
    fields: list[bytes]


# CALL fields, in order.
CALL_METHOD, CALL_PATH, CALL_QUERY, CALL_HEADERS, CALL_ID, CALL_BODY = range(6)
# RESULT fields, in order.
RESULT_STATUS, RESULT_OUTCOME, RESULT_HEADERS, RESULT_BODY = range(4)


@lru_cache(maxsize=16)
def _layout(count: int) -> struct.Struct:
    return struct.Struct(f"<IBIH{count}I")


def encode(kind: int, seq: int, fields: Sequence[bytes]) -> bytes:
    """Encode one frame."""
    lengths = [len(f) for f in fields]
    payload = 4 * len(fields) + sum(lengths)
    if payload > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {payload} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    return _layout(len(fields)).pack(payload, kind, seq, len(fields), *lengths) + b"".join(fields)


@lru_cache(maxsize=16)
def _lengths(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}I")


def _parse(buf: memoryview, start: int) -> tuple[Frame, int] | None:
    """Parse one frame at ``start``; return it and the offset after it, or None if incomplete."""
    end_header = start + HEADER.size
    if len(buf) < end_header:
        return None
    payload, kind, seq, count = HEADER.unpack_from(buf, start)
    if payload > MAX_FRAME_BYTES:
        raise ProtocolError(f"peer announced a {payload}-byte frame (limit {MAX_FRAME_BYTES})")
    end = end_header + payload
    if len(buf) < end:
        return None
    if 4 * count > payload:
        raise ProtocolError(f"frame announces {count} fields in a {payload}-byte payload")
    lengths = _lengths(count).unpack_from(buf, end_header)
    offset = end_header + 4 * count
    fields = []
    for length in lengths:
        fields.append(bytes(buf[offset : offset + length]))  # one copy from a memoryview
        offset += length
    if offset != end:
        raise ProtocolError(
            f"frame fields add up to {offset - start} bytes, header says {end - start}"
        )
    return Frame(kind, seq, fields), end


class FrameDecoder:
    """Incremental decoder for a byte stream (asyncio ``data_received``)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        if not self._buf:
            frames, used = _parse_all(data)
            if used < len(data):
                self._buf += data[used:]
            return frames
        self._buf += data
        frames, used = _parse_all(self._buf)
        del self._buf[:used]
        return frames

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


def _parse_all(buf: bytes | bytearray) -> tuple[list[Frame], int]:
    frames = []
    offset = 0
    with memoryview(buf) as view:
        while (parsed := _parse(view, offset)) is not None:
            frame, offset = parsed
            frames.append(frame)
    return frames, offset


class FrameReader:
    """Blocking reader for the worker side: one ``recv`` per frame in the common case."""

    __slots__ = ("_decoder", "_pending", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._pending: list[Frame] = []

    def read(self) -> Frame | None:
        """Return the next frame, or None when the peer closed the connection."""
        while not self._pending:
            data = self._sock.recv(262144)
            if not data:
                if self._decoder.pending_bytes:
                    raise ProtocolError("connection closed in the middle of a frame")
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    def read_ready(self) -> Frame | None:
        """The next frame if it has already arrived (never blocks), else None."""
        if not self._pending:
            try:
                data = self._sock.recv(262144, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            if not data:
                return None  # closed: the next read() says so
            self._pending.extend(self._decoder.feed(data))
            if not self._pending:
                return None
        return self._pending.pop(0)
