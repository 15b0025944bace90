"""Requests between nodes: HMAC over method, path, time and node, within a time window."""

from __future__ import annotations

import pytest

from registry.errors import MeshAuthError
from registry.meshauth import WINDOW_S, sign_request, verify_request

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
