"""Requests between nodes: HMAC over method, path, time and node, within a time window;
forwarded calls also over their body and a nonce that is accepted once."""

from __future__ import annotations

import pytest

from registry.errors import MeshAuthError
from registry.meshauth import (
    AUTH_HEADER,
    NONCE_HEADER,
    WINDOW_S,
    ReplayGuard,
    sign_call,
    sign_request,
    verify_request,
)

KEY = b"mesh-secret"
PATH = "/system/bundles/" + "a" * 64


def test_a_signed_request_names_its_node() -> None:
    headers = sign_request(KEY, "edge-2", "GET", PATH, "edge-1", now=1000.0)
    assert (
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0 + WINDOW_S - 1) == "edge-2"
    )


@pytest.mark.parametrize(
    ("key", "method", "path", "words"),
    [
        (b"another-mesh", "GET", PATH, "not signed with this mesh's key"),
        (KEY, "PUT", PATH, "not signed with this mesh's key"),
        (KEY, "GET", "/system/bundles/" + "b" * 64, "not signed with this mesh's key"),
    ],
)
def test_a_request_signed_for_something_else_is_refused(
    key: bytes, method: str, path: str, words: str
) -> None:
    headers = sign_request(key, "edge-2", "GET", PATH, "edge-1", now=1000.0)
    with pytest.raises(MeshAuthError, match=words):
        verify_request(KEY, method, path, headers, "edge-1", now=1000.0)


def test_a_replayed_request_outside_the_window_is_refused() -> None:
    headers = sign_request(KEY, "edge-2", "GET", PATH, "edge-1", now=1000.0)
    with pytest.raises(MeshAuthError, match="old or early"):
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0 + WINDOW_S + 1)
    with pytest.raises(MeshAuthError, match="old or early"):
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0 - WINDOW_S - 1)


def test_a_forged_node_name_breaks_the_signature() -> None:
    headers = sign_request(KEY, "edge-2", "GET", PATH, "edge-1", now=1000.0)
    headers["x-edgefaas-node"] = "edge-9"
    with pytest.raises(MeshAuthError, match="edge-9 is not signed"):
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0)


@pytest.mark.parametrize("missing", ["x-edgefaas-node", "x-edgefaas-time", "x-edgefaas-auth"])
def test_missing_headers_are_refused(missing: str) -> None:
    headers = sign_request(KEY, "edge-2", "GET", PATH, "edge-1", now=1000.0)
    del headers[missing]
    with pytest.raises(MeshAuthError, match="without"):
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0)


def test_a_bad_timestamp_is_refused() -> None:
    headers = sign_request(KEY, "edge-2", "GET", PATH, "edge-1", now=1000.0)
    headers["x-edgefaas-time"] = "yesterday"
    with pytest.raises(MeshAuthError, match="bad timestamp"):
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0)


def test_a_request_signed_for_another_node_is_refused() -> None:
    headers = sign_request(KEY, "edge-2", "GET", PATH, "edge-3", now=1000.0)
    with pytest.raises(MeshAuthError, match="for node edge-1"):
        verify_request(KEY, "GET", PATH, headers, "edge-1", now=1000.0)


# ---------------------------------------------------------------------- forwarded calls

CALL_PATH = "/function/echo/sub?x=1&y=2"
BODY = b'{"reading": 42}'


def signed_call(body: bytes = BODY, now: float = 1000.0) -> dict[str, str]:
    return sign_call(KEY, "edge-2", "POST", CALL_PATH, "edge-1", body, now=now)


def verify_call(headers: dict[str, str], body: bytes = BODY, path: str = CALL_PATH) -> str:
    return verify_request(KEY, "POST", path, headers, "edge-1", now=1000.0, body=body)


def test_a_forwarded_call_is_signed_over_its_body_and_a_fresh_nonce() -> None:
    headers = signed_call()
    assert verify_call(headers) == "edge-2"
    again = signed_call()
    assert again[NONCE_HEADER] != headers[NONCE_HEADER]
    assert again[AUTH_HEADER] != headers[AUTH_HEADER], "the nonce is part of the signature"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"reading": 43}', CALL_PATH),
        (b"", CALL_PATH),
        (BODY + b" ", CALL_PATH),
        (BODY, "/function/echo/sub?x=1&y=3"),
        (BODY, "/function/echo/sub"),
    ],
)
def test_a_forwarded_call_with_another_body_or_query_is_refused(body: bytes, path: str) -> None:
    with pytest.raises(MeshAuthError, match="not signed with this mesh's key"):
        verify_call(signed_call(), body=body, path=path)


def test_a_forwarded_call_with_a_swapped_nonce_is_refused() -> None:
    headers = signed_call()
    headers[NONCE_HEADER] = signed_call()[NONCE_HEADER]
    with pytest.raises(MeshAuthError, match="not signed with this mesh's key"):
        verify_call(headers)


@pytest.mark.parametrize("nonce", [None, ""])
def test_a_forwarded_call_without_a_nonce_is_refused(nonce: str | None) -> None:
    headers = signed_call()
    if nonce is None:
        del headers[NONCE_HEADER]
    else:
        headers[NONCE_HEADER] = nonce
    with pytest.raises(MeshAuthError, match="without an X-Edgefaas-Nonce"):
        verify_call(headers)


def test_a_plain_mesh_request_is_not_a_forwarded_call() -> None:
    """Bundle fetches are signed without body and nonce: they do not pass as calls."""
    headers = sign_request(KEY, "edge-2", "POST", CALL_PATH, "edge-1", now=1000.0)
    with pytest.raises(MeshAuthError, match="Nonce"):
        verify_call(headers)
    headers[NONCE_HEADER] = "00" * 12
    with pytest.raises(MeshAuthError, match="not signed with this mesh's key"):
        verify_call(headers)


def test_a_forwarded_call_outside_the_window_is_refused() -> None:
    headers = signed_call(now=1000.0 - WINDOW_S - 1)
    with pytest.raises(MeshAuthError, match="old or early"):
        verify_call(headers)


def test_a_replayed_nonce_is_refused() -> None:
    guard = ReplayGuard()
    guard.check("n1", now=10.0)
    guard.check("n2", now=10.0)
    with pytest.raises(MeshAuthError, match="replayed"):
        guard.check("n1", now=11.0)
    with pytest.raises(MeshAuthError, match="replayed"):
        guard.check("n2", now=10.0 + WINDOW_S)


def test_the_replay_guard_remembers_a_nonce_as_long_as_its_timestamp_is_accepted() -> None:
    """A call is accepted while its timestamp is within WINDOW_S either side of the clock,
    so a nonce must be remembered for twice the window, and may be forgotten after."""
    guard = ReplayGuard(window_s=30.0)
    guard.check("n1", now=100.0)
    with pytest.raises(MeshAuthError):
        guard.check("n1", now=160.0)
    guard.check("other", now=160.1)  # prunes what is older than 2 × 30 s
    guard.check("n1", now=160.2)


def test_the_replay_guard_forgets_old_nonces() -> None:
    guard = ReplayGuard(window_s=1.0)
    for n in range(1000):
        guard.check(f"n{n}", now=float(n))
    guard.check("n0", now=1000.0)
    with pytest.raises(MeshAuthError):
        guard.check("n999", now=1000.5)
