"""Errors of the runtime; all derive from :class:`RuntimeFailure`.

Each failure carries the HTTP status that says who is at fault, a stable ``code`` and a
message written for the caller: the shape every error of a node has, :class:`StatusError`,
which the gateway's errors share. The gateway maps them to responses in one place; they
cross process boundaries with :meth:`RuntimeFailure.to_dict` / :func:`failure_from_dict`.
"""

from __future__ import annotations

from typing import Any, ClassVar

Headers = list[tuple[bytes, bytes]]


class StatusError(Exception):
    """An error that says who is at fault: an HTTP status, a stable ``code`` and a message
    written for the caller. Subclasses name both in their class line —
    ``class NotFound(GatewayError, status=404, code="not_found")`` — and may add response
    headers (:meth:`headers`) and fields of the error document (:meth:`details`). The
    gateway turns any of them into a response in one place
    (:func:`gateway.errors.error_response`)."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> Headers:
        """Headers the response carries besides its content type."""
        return []

    def details(self) -> dict[str, Any]:
        """Fields the error document carries besides code and message."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class RuntimeFailure(StatusError, status=500, code="runtime_error"):
    """Base class of the runtime's errors: a call or a pool could not do what was asked."""


class HTTPError(RuntimeFailure, code="bad_request"):
    """Raised by a handler to answer with an error status, e.g. 400 for a bad event.

    >>> raise HTTPError(400, "missing field 'weight_g'")
    """

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


class Overloaded(RuntimeFailure, status=429, code="overloaded"):
    """The pool is saturated: its queue is full or the wait would exceed its budget."""

    def __init__(self, message: str, retry_after_s: int, reason: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason

    def headers(self) -> Headers:
        return [(b"retry-after", str(self.retry_after_s).encode())]

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason}


class Unavailable(RuntimeFailure, status=503, code="unavailable"):
    """The function cannot start (its module or ``init`` fails) or the pool is stopping."""


class WorkerCrashed(RuntimeFailure, status=502, code="worker_crashed"):
    """The worker serving the call died before answering."""


class CallTimedOut(RuntimeFailure, status=504, code="timeout"):
    """The call ran past its timeout; the worker was interrupted or killed."""


class ProtocolError(RuntimeFailure, code="protocol_error"):
    """A peer process sent a frame that does not follow the wire protocol."""


_BY_CODE: dict[str, type[RuntimeFailure]] = {
    cls.code: cls
    for cls in (RuntimeFailure, Unavailable, WorkerCrashed, CallTimedOut, ProtocolError)
}


def failure_from_dict(data: dict[str, Any]) -> RuntimeFailure:
    """Rebuild a failure sent by :meth:`RuntimeFailure.to_dict` (unknown codes → base class)."""
    cls = _BY_CODE.get(str(data.get("code")), RuntimeFailure)
    return cls(str(data.get("message", "")))
