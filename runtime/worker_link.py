"""The gateway's end of one worker's socket, and the :class:`Call` objects sent through it.

A :class:`WorkerLink` is an asyncio protocol: it writes CALL frames, reads READY / RESULT
frames, and tells its owner (a :class:`WorkerOwner`, its pool's
:class:`~runtime.workers.WorkerSet`) about each. It holds the calls in flight on its worker,
keyed by sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Protocol, cast

from runtime.errors import ProtocolError, RuntimeFailure
from runtime.protocol import (
    RESULT_BODY,
    RESULT_HEADERS,
    RESULT_OUTCOME,
    RESULT_STATUS,
    FrameDecoder,
    Kind,
    encode,
)
from runtime.states import WorkerPhase, check_worker

START_FRAME = encode(Kind.START, 0, [])


class Result:
    """A worker's answer to one call: status, headers (wire form), body and outcome."""

    __slots__ = ("body", "headers", "outcome", "status")

    def __init__(self, status: int, headers: bytes, body: bytes, outcome: int) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.outcome = outcome


class Call:
    """One call on its way through a pool. ``future`` resolves to a :class:`Result` or
    fails with a :class:`RuntimeFailure`."""

    __slots__ = (
        "call_id",
        "cold",
        "dispatched_at",
        "frame",
        "future",
        "queued_at",
        "seq",
    )

    def __init__(
        self, seq: int, call_id: str, frame: bytes, future: asyncio.Future[Result]
    ) -> None:
        self.seq = seq
        self.call_id = call_id
        self.frame = frame
        self.future = future
        self.queued_at = time.perf_counter()
        self.dispatched_at = 0.0
        self.cold = False

    def finish(self, result: Result) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, failure: RuntimeFailure) -> None:
        if not self.future.done():
            self.future.set_exception(failure)


class WorkerOwner(Protocol):
    """What a link reports to (its pool's :class:`~runtime.workers.WorkerSet`)."""

    def on_worker_ready(self, link: WorkerLink) -> None: ...

    def on_worker_init_failed(self, link: WorkerLink, message: str, trace: str) -> None: ...

    def on_result(self, link: WorkerLink, call: Call, result: Result) -> None: ...

    def on_worker_lost(self, link: WorkerLink) -> None: ...


class WorkerLink(asyncio.Protocol):
    """One worker process as the pool sees it."""

    def __init__(self, owner: WorkerOwner, token: int) -> None:
        self.owner = owner
        self.token = token
        self.pid = 0
        self.phase = WorkerPhase.STARTING
        self.calls: dict[int, Call] = {}
        self.requested_at = time.perf_counter()
        self.idle_since = time.monotonic()
        self.head_started_at = 0.0  # when the oldest call in ``calls`` started running
        self.in_free = False  # listed in the dispatcher's free list
        self.exit_status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.kill_reason = ""
        # Set when this worker's failure to start was already counted against the pool.
        self.failure_reported = False
        self.pidfd: int | None = None  # a sandboxed worker's: signals reach it, not a reused pid
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self._start_pending = False

    @property
    def state(self) -> str:
        """``starting``, ``ready``, ``busy``, ``draining`` or ``stopped``."""
        if self.phase is WorkerPhase.SERVING:
            return "busy" if self.calls else "ready"
        return str(self.phase.value)

    def set_phase(self, phase: WorkerPhase) -> None:
        self.phase = check_worker(self.phase, phase)

    def send(self, call: Call) -> None:
        """Write a CALL frame; the pool has checked that this worker has a free slot."""
        self.calls[call.seq] = call
        if self._transport is not None:
            self._transport.write(call.frame)

    def send_batch(self, calls: list[Call]) -> None:
        """Write several CALL frames at once (a batch the worker reads together)."""
        for call in calls:
            self.calls[call.seq] = call
        if self._transport is not None:
            self._transport.write(b"".join([call.frame for call in calls]))

    def close(self) -> None:
        """Close the socket: the worker exits when it next reads."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def start(self) -> None:
        """Tell a sandboxed worker that it is in its cgroup: it may run ``init`` now."""
        if self._transport is None:
            self._start_pending = True
        else:
            self._transport.write(START_FRAME)

    def kill(self, reason: str) -> None:
        """SIGKILL the worker (hung call, hung init, forced shutdown)."""
        self.kill_reason = self.kill_reason or reason
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.pid:
                os.kill(self.pid, signal.SIGKILL)
        self.close()

    def release_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._closing:  # retired or killed while its socket was being attached
            self._transport.close()
        elif self._start_pending:
            self._transport.write(START_FRAME)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self.kill(f"it broke the wire protocol ({exc})")
            return
        for kind, seq, fields in frames:
            if kind == Kind.RESULT:
                call = self.calls.pop(seq, None)
                if call is not None:
                    result = Result(
                        int(fields[RESULT_STATUS]),
                        fields[RESULT_HEADERS],
                        fields[RESULT_BODY],
                        int(fields[RESULT_OUTCOME]),
                    )
                    self.owner.on_result(self, call, result)
            elif kind == Kind.READY:
                self.pid = self.pid or int(fields[0])
                self.owner.on_worker_ready(self)
            elif kind == Kind.INIT_FAILED:
                self.owner.on_worker_init_failed(
                    self, fields[0].decode("utf-8", "replace"), fields[1].decode("utf-8", "replace")
                )
            else:
                self.kill(f"it sent an unexpected frame kind {kind}")
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.owner.on_worker_lost(self)
