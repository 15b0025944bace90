"""Build events as the worker hands them to a handler."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from runtime import Event
from runtime.event import build_header_block


def make_event(
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
    method: str = "POST",
    path: str = "/",
) -> Event:
    pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    query_string = urlencode(query or []).encode("ascii")
    return Event(method, path, query_string, build_header_block(pairs), body)


def json_event(data: object, path: str = "/") -> Event:
    """A POST whose body is ``data`` as JSON (NaN and Infinity included, as json allows)."""
    body = json.dumps(data).encode("utf-8")
    return make_event(body, headers={"content-type": "application/json"}, path=path)
