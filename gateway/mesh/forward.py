"""Sending one call to another gateway — a peer, the cloud node, or a foreign
OpenFaaS-style gateway — over a shared pool of keep-alive connections.

A failure is sorted by what it means for the call. :class:`NotRun`: the target never ran it
(no connection, or it refused the call at admission and said so with ``X-Edgefaas-Refused``),
so the caller may try elsewhere. :class:`UpstreamFailed` / :class:`UpstreamTimedOut`: the
call reached the target and may have run, so it is answered with that error — never retried
(a function need not be idempotent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from gateway.errors import GatewayError
from runtime.errors import Headers

REFUSED_HEADER = b"x-edgefaas-refused"
HOP_HEADER = b"x-edgefaas-hop"
DIGEST_HEADER = b"x-edgefaas-digest"
# Request headers not passed on: hop-by-hop ones, what the client library sets itself, and
# what the gateway sets (a client must not smuggle in mesh headers or a deadline it reset).
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"x-call-id",
        b"x-deadline-ms",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"date",
        b"server",
        b"x-call-id",
        b"x-served-by",
        b"x-duration-seconds",
    }
)
MAX_CONNECTIONS = 128  # httpcore checks every pooled connection per request
KEEPALIVE_CONNECTIONS = 64
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class NotRun(Exception):
    """The target did not run the call; ``refused`` says why when it is not the target's
    fault — the target's own reason (e.g. "saturated"), or "busy" when this node had no
    free connection — and is empty when the target could not be reached."""

    def __init__(self, message: str, refused: str = "", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused
        self.retry_after_s = retry_after_s


class UpstreamFailed(GatewayError, status=502, code="upstream_failed"):
    """The target failed during the call; ``broken`` when the connection did (the target
    may be down), not when its answer was unusable."""

    def __init__(self, message: str, broken: bool = True) -> None:
        super().__init__(message)
        self.broken = broken


class UpstreamTimedOut(GatewayError, status=504, code="upstream_timeout"):
    """The target did not answer within the call's deadline."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The target's answer: status, headers to pass on, body, and how long the target
    itself says it took (``X-Duration-Seconds``; None when it does not say)."""

    status: int
    headers: Headers
    body: bytes
    remote_s: float | None


def forward_headers(headers: list[tuple[bytes, bytes]]) -> Headers:
    """The request headers a forwarded call carries on (mesh headers are never passed on)."""
    return [
        (key, value)
        for key, value in headers
        if key not in _DROP_REQUEST and not key.startswith(b"x-edgefaas-")
    ]


class Forwarder:
    """One connection pool for every target. Close it when the node stops."""

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=KEEPALIVE_CONNECTIONS
            ),
            trust_env=False,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def send(
        self,
        target: str,
        base_url: str,
        method: str,
        raw_path: bytes,
        headers: Headers,
        body: bytes,
        *,
        connect_s: float,
        answer_s: float,
        mesh: bool = True,
    ) -> Forwarded:
        """Send the call; ``target`` names it in errors ("peer edge-2", "the cloud").
        ``connect_s`` bounds getting a connection, ``answer_s`` the wait for the answer.
        Only a node of the mesh (``mesh``) is believed when it says it refused the call: a
        foreign gateway's answer is passed on as it is."""
        # Built by hand, not with build_request: only what the client sent goes on — no
        # Accept-Encoding or User-Agent of the client library (bodies pass through as they
        # are, never decoded on the way).
        request = httpx.Request(
            method,
            httpx.URL(base_url).copy_with(raw_path=raw_path),
            headers=headers,
            content=body,
            extensions={
                "timeout": httpx.Timeout(answer_s, connect=connect_s, pool=connect_s).as_dict()
            },
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.PoolTimeout:  # this node's connections are all busy: not the target's fault
            raise NotRun(
                f"no connection to {target} came free within {connect_s:g} s", "busy"
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NotRun(f"{target} could not be reached: {_describe(exc)}") from None
        except httpx.TimeoutException:
            raise _timed_out(target, answer_s) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"{target} failed during the call: {_describe(exc)}") from None
        try:
            data = await _read_capped(response, target)
        except httpx.TimeoutException:
            raise _timed_out(target, answer_s) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"{target} failed during the call: {_describe(exc)}") from None
        finally:
            await response.aclose()
        return _answer(target, response, data, mesh)


def _answer(target: str, response: httpx.Response, data: bytes, mesh: bool) -> Forwarded:
    raw = response.headers.raw
    refused = response.headers.get(REFUSED_HEADER.decode()) if mesh else None
    if refused:
        raise NotRun(
            f"{target} refused the call: {_error_message(data)}",
            refused,
            _retry_after(response.headers.get("retry-after")),
        )
    remote_s = None
    duration = response.headers.get("x-duration-seconds")
    if duration:
        try:
            remote_s = float(duration)
        except ValueError:
            remote_s = None
    kept = [
        (key.lower(), value)
        for key, value in raw
        if key.lower() not in _DROP_RESPONSE and not key.lower().startswith(b"x-edgefaas-")
    ]
    return Forwarded(response.status_code, kept, data, remote_s)


async def _read_capped(response: httpx.Response, target: str) -> bytes:
    chunks = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise UpstreamFailed(
                f"{target} answered with more than {MAX_RESPONSE_BYTES} bytes; not passed on",
                broken=False,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _timed_out(target: str, answer_s: float) -> UpstreamTimedOut:
    return UpstreamTimedOut(
        f"{target} did not answer within {answer_s:g} s; the call may have run there"
    )


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _error_message(data: bytes) -> str:
    try:
        message = json.loads(data)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace") or "no reason given"
    return str(message)


def _retry_after(value: str | None) -> int:
    try:
        return max(1, int(value or "1"))
    except ValueError:
        return 1
