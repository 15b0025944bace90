from __future__ import annotations

import json

import pytest

from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SettingsError,
    Unauthorized,
    error_response,
    internal_error_response,
)
from runtime.errors import (
    CallTimedOut,
    Overloaded,
    ProtocolError,
    RuntimeFailure,
    Unavailable,
    WorkerCrashed,
)

JSON = (b"content-type", b"application/json")


def body_of(body: bytes) -> object:
    return json.loads(body)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BadRequest("bad"), 400, "bad_request"),
        (NotFound("no function 'x'"), 404, "not_found"),
        (PayloadTooLarge("body of 7 MiB is over 6 MiB"), 413, "payload_too_large"),
        (Forbidden("no"), 403, "forbidden"),
        (SettingsError("EDGEFAAS_PORT: expected int, got 'x'"), 400, "invalid_setting"),
        (Unavailable("echo cannot start"), 503, "unavailable"),
        (WorkerCrashed("worker killed by SIGSEGV"), 502, "worker_crashed"),
        (CallTimedOut("ran past 5 s"), 504, "timeout"),
        (ProtocolError("bad frame"), 500, "protocol_error"),
        (RuntimeFailure("something"), 500, "runtime_error"),
    ],
)
def test_plain_errors(exc: GatewayError | RuntimeFailure, status: int, code: str) -> None:
    assert error_response(exc) == (
        status,
        [JSON],
        json.dumps({"error": {"code": code, "message": exc.message}}).encode(),
    )


def test_method_not_allowed_lists_the_allowed_methods() -> None:
    status, headers, body = error_response(
        MethodNotAllowed("DELETE /function/echo", ("GET", "POST"))
    )

    assert status == 405
    assert headers == [JSON, (b"allow", b"GET, POST")]
    assert body_of(body) == {
        "error": {"code": "method_not_allowed", "message": "DELETE /function/echo"}
    }


def test_unauthorized_asks_for_a_bearer_token() -> None:
    status, headers, body = error_response(Unauthorized("missing token"))

    assert status == 401
    assert headers == [JSON, (b"www-authenticate", b'Bearer realm="edgefaas"')]
    assert body_of(body) == {"error": {"code": "unauthorized", "message": "missing token"}}


def test_overloaded_says_when_to_retry_and_why() -> None:
    exc = Overloaded("echo: queue full (64 calls)", retry_after_s=2, reason="queue_full")

    status, headers, body = error_response(exc)

    assert status == 429
    assert headers == [JSON, (b"retry-after", b"2")]
    assert body_of(body) == {
        "error": {
            "code": "overloaded",
            "message": "echo: queue full (64 calls)",
            "reason": "queue_full",
        }
    }


def test_responses_do_not_share_header_lists() -> None:
    first = error_response(Unauthorized("a"))[1]
    second = error_response(NotFound("b"))[1]

    assert second == [JSON]
    assert first is not second


def test_internal_error_hides_details() -> None:
    status, headers, body = internal_error_response()

    assert status == 500
    assert headers == [JSON]
    assert body_of(body) == {
        "error": {
            "code": "internal",
            "message": "internal error in the gateway; the node's log has details",
        }
    }
    assert internal_error_response() == (status, headers, body)
