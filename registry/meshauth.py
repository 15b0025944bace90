"""Authenticating requests between nodes with the mesh key.

A request carries the sending node's name, a Unix timestamp and
``HMAC-SHA256(mesh_key, "METHOD\\nPATH\\nTIMESTAMP\\nFROM\\nTO")``, where TO is the name of the
node it is sent to. The receiver recomputes it with its own name and refuses requests whose
timestamp is further than ``WINDOW_S`` from its own clock: a captured request can neither be
replayed later nor sent to another node.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from registry.errors import MeshAuthError

WINDOW_S = 30.0
NODE_HEADER = "x-edgefaas-node"
TIME_HEADER = "x-edgefaas-time"
AUTH_HEADER = "x-edgefaas-auth"


def _mac(key: bytes, method: str, path: str, timestamp: str, node: str, to: str) -> str:
    message = f"{method.upper()}\n{path}\n{timestamp}\n{node}\n{to}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


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


def verify_request(
    key: bytes,
    method: str,
    path: str,
    headers: Mapping[str, str],
    me: str,
    now: float | None = None,
) -> str:
    """Return the sending node's name, or raise :class:`MeshAuthError` saying why not;
    ``me`` is the name of the node that received the request."""
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
    if not hmac.compare_digest(_mac(key, method, path, timestamp, node, me), given):
        raise MeshAuthError(
            f"mesh request from {node} is not signed with this mesh's key for node {me}"
        )
    return node
