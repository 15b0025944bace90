"""Errors of the gateway, and the one place where every error becomes an HTTP response.

Responses are JSON ``{"error": {"code": ..., "message": ...}}`` with the status that says
who is at fault: 400/401/403/404/405/409/413/422 for the caller, 429 + ``Retry-After`` for
overload, 502 for a crashed worker or upstream, 503 for a function (or the mesh) that cannot
serve, 504 for a timeout. Gateway and runtime errors share one shape,
:class:`runtime.errors.StatusError`; :func:`error_response` serves both.
"""

from __future__ import annotations

from runtime.errors import Headers, StatusError
from runtime.responses import JSON_TYPE, error_body


class GatewayError(StatusError, status=400, code="bad_request"):
    """Base class: a request the gateway refuses, with its status and error code."""


class BadRequest(GatewayError):
    """The request is malformed; the message names the bad header, parameter or field."""


class Unauthorized(GatewayError, status=401, code="unauthorized"):
    """No credentials, or credentials of the wrong form."""

    def headers(self) -> Headers:
        return [(b"www-authenticate", b'Bearer realm="edgefaas"')]


class Forbidden(GatewayError, status=403, code="forbidden"):
    """Credentials that are not valid here."""


class NotFound(GatewayError, status=404, code="not_found"):
    """No such function, bundle, call or route here."""


class MethodNotAllowed(GatewayError, status=405, code="method_not_allowed"):
    """The path exists, not with this method; ``allowed`` is what the ``Allow`` header lists."""

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> Headers:
        return [(b"allow", ", ".join(self.allowed).encode())]


class Conflict(GatewayError, status=409, code="conflict"):
    """The request contradicts the mesh's state (a version, a trigger path, a call id)."""


class PayloadTooLarge(GatewayError, status=413, code="payload_too_large"):
    """A body over its limit (read no further than the limit)."""


class UnsupportedMediaType(GatewayError, status=415, code="unsupported_media_type"):
    """A body of a type the route does not take."""


class Invalid(GatewayError, status=422, code="invalid"):
    """A request that fits the schema but not a rule the schema cannot say (max ≥ min, the
    name a bundle holds); the message names the field."""


class Unprocessable(GatewayError, status=422, code="bundle_rejected"):
    """A bundle that fails verification or holds an unsafe archive."""


class TooManyLogins(GatewayError, status=429, code="too_many_logins"):
    """Too many failed admin logins from one address; ``retry_after_s`` says when to try."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> Headers:
        return [(b"retry-after", str(self.retry_after_s).encode())]


class MeshUnavailable(GatewayError, status=503, code="mesh_unavailable"):
    """The mesh's Redis is unreachable: what needs it cannot be done now."""


class UsageError(GatewayError, code="usage"):
    """The command line asks for something that makes no sense (exit code 2)."""


class StartupFailed(GatewayError, code="startup_failed"):
    """A node (or a local mesh) could not start; the CLI exits 3."""


class SettingsError(GatewayError, code="invalid_setting"):
    """A flag or environment variable has a bad value (raised before the node starts)."""


def error_response(exc: StatusError) -> tuple[int, Headers, bytes]:
    """Status, headers and JSON body for any gateway or runtime error."""
    headers: Headers = [(b"content-type", JSON_TYPE), *exc.headers()]
    return exc.status, headers, error_body(exc.code, exc.message, **exc.details())


def internal_error_response() -> tuple[int, Headers, bytes]:
    """A bug in the gateway: the caller learns nothing more than that (details go to the log)."""
    body = error_body("internal", "internal error in the gateway; the node's log has details")
    return 500, [(b"content-type", JSON_TYPE)], body
