"""Echo: answers with exactly the request it got — the benchmark function.

Event: any method, any body (bytes, not parsed). Optional query parameter ``sleep_ms``, an
integer from 0 to 60000: the handler sleeps that many milliseconds before answering, which
holds a worker busy and so demonstrates pool saturation (429s, spill-over).

Response: status 200, the request body unchanged. When the request has a ``Content-Type``
the response carries the same one; otherwise the body goes out as
``application/octet-stream``. A bad ``sleep_ms`` is a 400 that names it.

A sleep longer than the function's ``timeout_s`` ends as the runtime's timeout (504).

The no-sleep path reads only the query (to find ``sleep_ms``), one header and the body;
most of its cost is the runtime's lazy parsing of ``event.query`` and ``event.headers``.
"""

from __future__ import annotations

import time

from runtime import Event, HTTPError

MAX_SLEEP_MS = 60_000

EchoResult = bytes | tuple[bytes, int, dict[str, str]]


def handle(event: Event) -> EchoResult:
    """Sleep if asked to, then return the body with the request's content type."""
    query = event.query
    if query and "sleep_ms" in query:
        sleep_ms = parse_sleep_ms(query["sleep_ms"])
        if sleep_ms:  # sleep(0) would still be a system call
            time.sleep(sleep_ms / 1000)
    content_type = event.headers.get("content-type")
    if content_type is None:
        return event.body
    return event.body, 200, {"content-type": content_type}


def parse_sleep_ms(text: str) -> int:
    """``sleep_ms`` as plain ASCII digits, 0 to 60000; anything else is the caller's error."""
    # The length check comes first: int() refuses strings of more than 4300 digits.
    if not (len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > MAX_SLEEP_MS:
        raise HTTPError(
            400, f"query parameter 'sleep_ms' must be an integer from 0 to {MAX_SLEEP_MS}"
        )
    return int(text)
