"""Turn what a handler returns into an HTTP status, headers and body.

=====================================  ==============================================
handler returns                        response
=====================================  ==============================================
``dict`` or ``list``                   200, JSON, ``application/json``
``str``                                200, UTF-8 text, ``text/plain; charset=utf-8``
``bytes`` / ``bytearray``              200, as is, ``application/octet-stream``
``None``                               204, empty
``(body, status)``                     ``body`` rendered as above, with ``status``
``(body, status, headers)``            the same, plus ``headers`` (a ``dict``)
=====================================  ==============================================

Headers given by the handler win over the default ``content-type``. Framing headers
(``Content-Length``, ``Transfer-Encoding``, ``Connection`` ...) and edgefaas' own ``X-Call-Id``,
``X-Served-By`` and ``X-Duration-Seconds`` are the gateway's: a handler's values are dropped.
"""

from __future__ import annotations

import json
import re
from typing import Any

JSON_TYPE = b"application/json"
TEXT_TYPE = b"text/plain; charset=utf-8"
BINARY_TYPE = b"application/octet-stream"

RenderedHeaders = list[tuple[bytes, bytes]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field name
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # visible Latin-1, space and tab
GATEWAY_HEADERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"te",
        b"trailer",
        b"x-call-id",
        b"x-served-by",
        b"x-duration-seconds",
    }
)


class RenderError(TypeError):
    """The handler returned a value that has no HTTP form."""


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON error document every edgefaas error response carries."""
    error: dict[str, Any] = {"code": code, "message": message}
    error.update(extra)
    return json.dumps({"error": error}).encode()


def render(value: Any) -> tuple[int, RenderedHeaders, bytes]:
    """Render a handler's return value; raise :class:`RenderError` for unusable values."""
    if isinstance(value, tuple):
        return _render_tuple(value)
    content_type, body = _render_body(value)
    if body is None:
        return 204, [], b""
    return 200, [(b"content-type", content_type)], body


def _render_tuple(value: tuple[Any, ...]) -> tuple[int, RenderedHeaders, bytes]:
    if len(value) not in (2, 3):
        raise RenderError(
            f"handler returned a tuple of {len(value)} items; expected "
            "(body, status) or (body, status, headers)"
        )
    status = value[1]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise RenderError(f"handler returned status {status!r}; expected an integer 100–599")
    content_type, body = _render_body(value[0])
    headers: RenderedHeaders = [] if body is None else [(b"content-type", content_type)]
    if len(value) == 3:
        headers = _merge_headers(headers, value[2])
    return status, headers, body or b""


def _render_body(value: Any) -> tuple[bytes, bytes | None]:
    if isinstance(value, bytes):
        return BINARY_TYPE, value
    if isinstance(value, str):
        return TEXT_TYPE, value.encode("utf-8")
    if isinstance(value, (dict, list)):
        try:
            return JSON_TYPE, json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise RenderError(
                f"handler returned a value that is not JSON-serialisable: {exc}"
            ) from None
    if isinstance(value, (bytearray, memoryview)):
        return BINARY_TYPE, bytes(value)
    if value is None:
        return b"", None
    raise RenderError(
        f"handler returned {type(value).__name__}; expected dict, list, str, "
        "bytes, None or a (body, status[, headers]) tuple"
    )


def _merge_headers(defaults: RenderedHeaders, extra: Any) -> RenderedHeaders:
    if not isinstance(extra, dict):
        raise RenderError(
            f"handler returned headers of type {type(extra).__name__}; "
            "expected a dict of str to str"
        )
    given: RenderedHeaders = []
    for name, value in extra.items():
        if not isinstance(name, str) or not isinstance(value, (str, int, float)):
            raise RenderError(f"handler returned header {name!r}: {value!r}; expected str: str")
        text = str(value)
        if not _TOKEN.fullmatch(name):
            raise RenderError(f"handler returned an invalid header name {name!r}")
        if not _VALUE.fullmatch(text):
            raise RenderError(
                f"handler returned header {name!r} with a control character or a character "
                "outside Latin-1 in its value"
            )
        key = name.lower().encode("latin-1")
        if key not in GATEWAY_HEADERS and not key.startswith(b"x-edgefaas-"):  # mesh's own
            given.append((key, text.encode("latin-1")))
    names = {name for name, _ in given}
    return [h for h in defaults if h[0] not in names] + given
