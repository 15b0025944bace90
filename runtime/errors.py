"""Errors of the runtime; all derive from :class:`RuntimeFailure`.

Each failure carries the HTTP status that says who is at fault, a stable ``code`` and a
message written for the caller. The gateway maps them to responses in one place; they cross
process boundaries with :meth:`RuntimeFailure.to_dict` / :func:`failure_from_dict`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RuntimeFailure(Exception):
    """Base class: a call or a pool could not do what was asked."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "runtime_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class HTTPError(RuntimeFailure):
    """Raised by a handler to answer with an error status, e.g. 400 for a bad event.

    >>> raise HTTPError(400, "missing field 'weight_g'")
    """

    code = "bad_request"

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be 400–599, got {status}")
        super().__init__(message)
        self.http_status = status
        self.error_code = code or _CODES_BY_STATUS.get(status, "error")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.error_code, "message": self.message}


_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
}


class Overloaded(RuntimeFailure):
    """The pool is saturated: its queue is full or the wait would exceed its budget."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int, reason: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class Unavailable(RuntimeFailure):
    """The function cannot start (its module or ``init`` fails) or the pool is stopping."""

    status = 503
    code = "unavailable"


class WorkerCrashed(RuntimeFailure):
    """The worker serving the call died before answering."""

    status = 502
    code = "worker_crashed"


class CallTimedOut(RuntimeFailure):
    """The call ran past its timeout; the worker was interrupted or killed."""

    status = 504
    code = "timeout"


class ProtocolError(RuntimeFailure):
    """A peer process sent a frame that does not follow the wire protocol."""

    code = "protocol_error"


_BY_CODE: dict[str, type[RuntimeFailure]] = {
    cls.code: cls
    for cls in (RuntimeFailure, Unavailable, WorkerCrashed, CallTimedOut, ProtocolError)
}


def failure_from_dict(data: dict[str, Any]) -> RuntimeFailure:
    """Rebuild a failure sent by :meth:`RuntimeFailure.to_dict` (unknown codes → base class)."""
    cls = _BY_CODE.get(str(data.get("code")), RuntimeFailure)
    return cls(str(data.get("message", "")))
