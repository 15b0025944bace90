"""What a handler receives: the :class:`Event` of one call and the :class:`Context` of its worker.

Headers and query are decoded lazily, on first access, so a handler that only reads the body
pays nothing for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from runtime.errors import HTTPError


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive request headers. Repeated headers join with ``", "``."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        merged: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._map = merged

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def getlist(self, name: str) -> list[str]:
        key = name.lower()
        return [value for item_name, value in self._items if item_name.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Query(Mapping[str, str]):
    """Read-only query parameters; ``query["k"]`` is the last value, ``getlist`` all of them."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._map = dict(items)

    def __getitem__(self, name: str) -> str:
        return self._map[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self._items if key == name]

    def __repr__(self) -> str:
        return f"Query({self._items!r})"


def parse_header_block(block: bytes) -> list[tuple[str, str]]:
    """Split the wire form of headers (``name:value`` lines joined by ``\\n``)."""
    if not block:
        return []
    pairs = []
    for line in block.decode("latin-1").split("\n"):
        name, _, value = line.partition(":")
        pairs.append((name, value))
    return pairs


def build_header_block(headers: Iterator[tuple[bytes, bytes]] | list[tuple[bytes, bytes]]) -> bytes:
    """Join raw ASGI header pairs into the wire form read by :func:`parse_header_block`."""
    return b"\n".join([name + b":" + value for name, value in headers])


class Event:
    """One call as the handler sees it.

    ``method`` and ``path`` are strings, ``body`` is the raw request body (bytes), ``call_id``
    the id the gateway gave the call (``X-Call-Id``). ``headers`` and ``query`` are mappings.
    """

    __slots__ = (
        "_headers",
        "_query",
        "_query_string",
        "_raw_headers",
        "body",
        "call_id",
        "method",
        "path",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: bytes,
        raw_headers: bytes,
        body: bytes,
        call_id: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.call_id = call_id
        self._query_string = query_string
        self._raw_headers = raw_headers
        self._headers: Headers | None = None
        self._query: Query | None = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(parse_header_block(self._raw_headers))
        return self._headers

    @property
    def query(self) -> Query:
        if self._query is None:
            text = self._query_string.decode("latin-1")
            self._query = Query(parse_qsl(text, keep_blank_values=True) if text else [])
        return self._query

    def text(self) -> str:
        """The body decoded as UTF-8; a body that is not UTF-8 is the caller's error (400)."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None

    def json(self) -> Any:
        """The body parsed as JSON; an empty or malformed body is the caller's error (400)."""
        if not self.body:
            raise HTTPError(400, "request body is empty; expected JSON")
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise HTTPError(400, "request body is JSON nested too deeply") from None

    def __repr__(self) -> str:
        return f"Event({self.method} {self.path}, {len(self.body)} bytes, call_id={self.call_id!r})"


@dataclass(frozen=True)
class Context:
    """Given once to ``init(context)`` in each worker, after the fork.

    ``root`` is the function's folder (also the working directory), ``files`` the extra files
    declared in the manifest (absolute paths), ``env`` the function's declared environment.
    """

    function: str
    root: Path
    worker_pid: int
    timeout_s: float
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
