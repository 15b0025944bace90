"""Errors of the gateway, and the one place where every error becomes an HTTP response.

Responses are JSON ``{"error": {"code": ..., "message": ...}}`` with the status that says
who is at fault: 400/404/405/413 for the caller, 429 + ``Retry-After`` for overload, 502 for
a crashed worker, 503 for a function that cannot start, 504 for a timeout.
"""

from __future__ import annotations

from typing import ClassVar

from runtime.errors import Overloaded, RuntimeFailure
from runtime.responses import JSON_TYPE, error_body

Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """Base class: a request the gateway refuses, with its status and error code."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    pass


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class UsageError(GatewayError):
    """The command line asks for something that makes no sense (exit code 2)."""

    code = "usage"


class StartupFailed(GatewayError):
    """A node (or a local mesh) could not start; the CLI exits 3."""

    code = "startup_failed"


class SettingsError(GatewayError):
    """A flag or environment variable has a bad value (raised before the node starts)."""

    code = "invalid_setting"


def error_response(exc: GatewayError | RuntimeFailure) -> tuple[int, Headers, bytes]:
    """Status, headers and JSON body for any gateway or runtime error."""
    headers: Headers = [(b"content-type", JSON_TYPE)]
    if isinstance(exc, GatewayError):
        if isinstance(exc, MethodNotAllowed):
            headers.append((b"allow", ", ".join(exc.allowed).encode()))
        if isinstance(exc, Unauthorized):
            headers.append((b"www-authenticate", b'Bearer realm="edgefaas"'))
        return exc.status, headers, error_body(exc.code, exc.message)
    if isinstance(exc, Overloaded):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
        body = error_body(exc.code, exc.message, reason=exc.reason)
        return exc.status, headers, body
    return exc.status, headers, error_body(exc.code, exc.message)


def internal_error_response() -> tuple[int, Headers, bytes]:
    """A bug in the gateway: the caller learns nothing more than that (details go to the log)."""
    body = error_body("internal", "internal error in the gateway; the node's log has details")
    return 500, [(b"content-type", JSON_TYPE)], body
