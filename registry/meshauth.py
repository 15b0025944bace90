"""Authenticating requests between nodes with the mesh key.

A request carries the sending node's name, a Unix timestamp and
``HMAC-SHA256(mesh_key, "METHOD\\nPATH\\nTIMESTAMP\\nFROM\\nTO")``, where TO is the name of the
node it is sent to. The receiver recomputes it with its own name and refuses requests whose
timestamp is further than ``WINDOW_S`` from its own clock: a captured request can neither be
replayed later nor sent to another node.

A forwarded call (a function call one node sends to a peer or to the cloud) also signs a
random nonce and the sha256 of its body — ``...\\nTO\\nNONCE\\nSHA256(BODY)`` — so its body
cannot be swapped, and the receiver's :class:`ReplayGuard` refuses a nonce it has seen within
the window: a captured call cannot be run twice.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import deque
from collections.abc import Mapping

from registry.errors import MeshAuthError

WINDOW_S = 30.0
NODE_HEADER = "x-edgefaas-node"
TIME_HEADER = "x-edgefaas-time"
AUTH_HEADER = "x-edgefaas-auth"
NONCE_HEADER = "x-edgefaas-nonce"


def _mac(
    key: bytes, method: str, path: str, timestamp: str, node: str, to: str, extra: str = ""
) -> str:
    message = f"{method.upper()}\n{path}\n{timestamp}\n{node}\n{to}{extra}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _call_extra(nonce: str, body: bytes) -> str:
    return f"\n{nonce}\n{hashlib.sha256(body).hexdigest()}"


def sign_request(
    key: bytes, node: str, method: str, path: str, to: str, now: float | None = None
) -> dict[str, str]:
    """Headers that authenticate ``METHOD PATH`` from ``node`` to the node named ``to``."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    return {
        NODE_HEADER: node,
        TIME_HEADER: timestamp,
        AUTH_HEADER: _mac(key, method, path, timestamp, node, to),
    }


def sign_call(
    key: bytes, node: str, method: str, path: str, to: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers that authenticate a forwarded call — ``METHOD PATH`` (with its query) and its
    ``body`` — from ``node`` to the node named ``to``, once."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = os.urandom(12).hex()
    return {
        NODE_HEADER: node,
        TIME_HEADER: timestamp,
        NONCE_HEADER: nonce,
        AUTH_HEADER: _mac(key, method, path, timestamp, node, to, _call_extra(nonce, body)),
    }


def verify_request(
    key: bytes,
    method: str,
    path: str,
    headers: Mapping[str, str],
    me: str,
    now: float | None = None,
    *,
    body: bytes | None = None,
) -> str:
    """Return the sending node's name, or raise :class:`MeshAuthError` saying why not;
    ``me`` is the name of the node that received the request. With ``body``, the request
    is a forwarded call (see :func:`sign_call`): its nonce and body are checked too."""
    extra = ""
    if body is not None:
        nonce = headers.get(NONCE_HEADER, "")
        if not nonce:
            raise MeshAuthError("forwarded call without an X-Edgefaas-Nonce header")
        extra = _call_extra(nonce, body)
    node = headers.get(NODE_HEADER, "")
    timestamp = headers.get(TIME_HEADER, "")
    given = headers.get(AUTH_HEADER, "")
    if not (node and timestamp and given):
        raise MeshAuthError("mesh request without X-Edgefaas-Node/-Time/-Auth headers")
    try:
        sent = float(timestamp)
    except ValueError:
        raise MeshAuthError(f"mesh request with a bad timestamp {timestamp!r}") from None
    skew = abs((time.time() if now is None else now) - sent)
    if not skew <= WINDOW_S:
        raise MeshAuthError(
            f"mesh request from {node} is {skew:.0f} s old or early "
            f"(limit {WINDOW_S:g} s): replayed, or the clocks disagree"
        )
    if not hmac.compare_digest(_mac(key, method, path, timestamp, node, me, extra), given):
        raise MeshAuthError(
            f"mesh request from {node} is not signed with this mesh's key for node {me}"
        )
    return node


class ReplayGuard:
    """Nonces of the forwarded calls accepted within the last ``WINDOW_S`` (older ones are
    refused by their timestamp anyway)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()

    def check(self, nonce: str, now: float | None = None) -> None:
        """Record ``nonce``; raise :class:`MeshAuthError` if it was seen before."""
        now = time.monotonic() if now is None else now
        order = self._order
        while order and order[0][0] < now - 2 * self.window_s:
            self._seen.discard(order.popleft()[1])
        if nonce in self._seen:
            raise MeshAuthError("forwarded call replayed: its nonce was used before")
        self._seen.add(nonce)
        order.append((now, nonce))
