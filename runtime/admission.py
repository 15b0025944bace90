"""The admission decision for one call: the single place where a call is accepted for this
node's pool or not (later issues send the refused ones to a peer or the cloud instead)."""

from __future__ import annotations

import math
from enum import Enum
from typing import NamedTuple

from runtime.errors import Overloaded, RuntimeFailure, Unavailable


class Verdict(Enum):
    FREE_WORKER = "free_worker"  # a worker can start the call now
    QUEUE_OK = "queue_ok"  # the call waits in the queue, within its budget
    QUEUE_FULL = "queue_full"  # queue_max calls already wait
    WAIT_TOO_LONG = "wait_too_long"  # the estimated wait exceeds max_queue_wait_ms
    UNAVAILABLE = "unavailable"  # the function cannot start, or is stopping


class Admission(NamedTuple):
    verdict: Verdict
    wait_s: float = 0.0
    message: str = ""

    @property
    def admitted(self) -> bool:
        return self.verdict in (Verdict.FREE_WORKER, Verdict.QUEUE_OK)

    def failure(self) -> RuntimeFailure:
        """The error a caller gets when the call is not admitted (and not sent elsewhere)."""
        if self.verdict is Verdict.UNAVAILABLE:
            return Unavailable(self.message)
        return Overloaded(self.message, max(1, math.ceil(self.wait_s)), self.verdict.value)


FREE = Admission(Verdict.FREE_WORKER)


def admit_to_queue(
    function: str, *, queued: int, queue_max: int, max_wait_s: float, wait_s: float
) -> Admission:
    """No worker is free: may the call wait for one? Not if ``queue_max`` calls already wait,
    nor if its estimated wait ``wait_s`` exceeds ``max_wait_s``."""
    if queued >= queue_max:
        return Admission(
            Verdict.QUEUE_FULL,
            wait_s,
            f"function {function} is saturated: {queued} calls already wait for a worker",
        )
    if wait_s > max_wait_s:
        return Admission(
            Verdict.WAIT_TOO_LONG,
            wait_s,
            f"function {function} is saturated: a call would wait about {wait_s * 1000:.0f} ms, "
            f"over its {max_wait_s * 1000:.0f} ms limit",
        )
    return Admission(Verdict.QUEUE_OK, wait_s)
