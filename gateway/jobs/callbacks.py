"""Callbacks: POST an asynchronous call's result to the URL its caller gave in X-Callback-Url.

:class:`CallbackPolicy` decides which URLs may be called back. By default only public
(globally routable) addresses: a callback must not become a way to reach the node's own
services, its LAN or a cloud metadata endpoint (169.254.169.254). ``--callback-allow`` lists
what is allowed besides: host names (``hooks.lan``), suffix wildcards (``*.corp.example``,
which match ``a.corp.example`` and ``a.b.corp.example`` but not ``corp.example``) and CIDRs
(``10.0.0.0/8``, ``fd00::/8``). A listed name is trusted whatever it resolves to.

:class:`CallbackSender` delivers results as OpenFaaS's queue-worker does: a POST of the
function's response body with ``X-Call-Id``, ``X-Function-Name``, ``X-Function-Status`` (the
function's HTTP status code) and ``X-Duration-Seconds``. Unlike it, it retries connection
errors, timeouts, 429 and 5xx with backoff (``BACKOFF_S``), within ``DEADLINE_S`` in all.

DNS rebinding: a name checked when the call is accepted may resolve elsewhere by the time
the result is ready (hours later, or one second later by design). So every attempt resolves
and checks the name again, then connects to the address it just checked: the URL's host is
replaced by that address and the name travels in ``Host`` and, for https, as the TLS server
name (so the certificate is still verified against the name). Nothing resolves the name
between the check and the connection, and redirects and proxies are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpx

from gateway.errors import BadRequest, SettingsError

log = logging.getLogger("edgefaas.callbacks")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FLAG = "--callback-allow"
HEADER = "X-Callback-Url"
MAX_URL_CHARS = 2048
RESOLVE_S = 5.0  # longest wait for the resolver
CONNECT_S = 5.0
SEND_S = 10.0  # per attempt: connect, send the result, read the answer
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # waits between attempts: at most 6 attempts
RETRY_AFTER_MAX_S = 30.0  # a receiver's Retry-After is honoured up to this
DEADLINE_S = 60.0  # all attempts of one delivery, waits included
CLOSE_WAIT_S = 3.0
USER_AGENT = "edgefaas-callback"
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NOT_AN_ENTRY = "{!r} is not a host name, a *.domain wildcard or a CIDR"


class CallbackRefused(BadRequest):
    """A callback URL that may not be called; ``transient`` when only its resolution failed
    (worth trying again later)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class AllowList:
    """What ``--callback-allow`` adds to public addresses."""

    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".corp.example" for "*.corp.example"
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """Parse a comma-separated list; ValueError names the entry that is wrong."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry.startswith("*."):
                suffixes.append("." + _host_name(entry[2:], raw.strip()))
            else:
                _add_entry(entry, raw.strip(), names, networks)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host in self.names or host.endswith(self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _add_entry(entry: str, raw: str, names: set[str], networks: list[IPNetwork]) -> None:
    try:
        networks.append(ipaddress.ip_network(entry))  # a bare address is its /32 or /128
        return
    except ValueError as exc:
        if re.fullmatch(r"[0-9a-f.:]+/.*", entry):
            raise ValueError(f"{raw!r} is not a CIDR ({exc})") from None
    names.add(_host_name(entry, raw))


def _host_name(entry: str, raw: str) -> str:
    labels = entry.split(".")
    if (
        len(entry) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # 10.0.0.300 is a mistyped address, not a name
    ):
        raise ValueError(_NOT_AN_ENTRY.format(raw))
    return entry


def allow_list_problem(text: str) -> str:
    """Why ``text`` is not a valid ``--callback-allow`` value, or "" when it is."""
    try:
        AllowList.parse(text)
    except ValueError as exc:
        return str(exc)
    return ""


@dataclass(frozen=True)
class Target:
    """A checked callback URL and the addresses it may be sent to."""

    url: SplitResult
    host: str  # lowercased, without brackets or trailing dot
    port: int
    addresses: tuple[IPAddress, ...]


class CallbackPolicy:
    """Checks callback URLs against the allow-list; see the module's docstring."""

    def __init__(self, allow: str = "") -> None:
        try:
            self.allow = AllowList.parse(allow)
        except ValueError as exc:
            raise SettingsError(f"{FLAG}: {exc}") from None

    async def check(self, url: str) -> str | None:
        """Why ``url`` may not be called back (a message for the caller), or None."""
        try:
            await self.resolve(url)
        except CallbackRefused as exc:
            return exc.message
        return None

    async def resolve(self, url: str) -> Target:
        """Parse ``url``, resolve its host and check every address it resolves to; raises
        :class:`CallbackRefused` if any of them is not allowed."""
        parts = _parse(url)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        literal = _ip_literal(host)
        if literal is not None:
            addresses: tuple[IPAddress, ...] = (literal,)
        else:
            addresses = await _resolve(host, port)
        if literal is None and self.allow.allows_name(host):
            return Target(parts, host, port, addresses)
        for address in addresses:
            self._check_address(host, literal is not None, address)
        return Target(parts, host, port, addresses)

    def _check_address(self, host: str, literal: bool, address: IPAddress) -> None:
        kind = _non_public(address)
        if kind is None or self.allow.allows_address(address):
            return
        cidr = f"{address}/{address.max_prefixlen}"
        if literal:
            raise CallbackRefused(
                f"{HEADER}: {address} is {kind} address; allow it with {FLAG} {cidr}"
            )
        raise CallbackRefused(
            f"{HEADER}: {host} resolves to {address}, {kind} address; "
            f"allow it with {FLAG} {host} or {FLAG} {cidr}"
        )


def _parse(url: str) -> SplitResult:
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(f"{HEADER}: longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 — raises ValueError on a bad port
        httpx.URL(url)  # what the sender will send: refuse now what it could not
    except (ValueError, httpx.InvalidURL) as exc:
        raise CallbackRefused(f"{HEADER}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused(f"{HEADER}: expected an http:// or https:// URL")
    if "@" in parts.netloc:
        raise CallbackRefused(f"{HEADER}: user names and passwords are not allowed in the URL")
    if not parts.hostname:
        raise CallbackRefused(f"{HEADER}: the URL has no host")
    if not parts.hostname.isascii() or any(c in parts.hostname for c in " \t\r\n"):
        raise CallbackRefused(f"{HEADER}: the host must be ASCII (use its xn-- form)")
    if parts.port == 0:
        raise CallbackRefused(f"{HEADER}: port 0 cannot be called")
    return parts


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return _unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:10.1.2.3`` is 10.1.2.3 on the wire, so it is judged as that."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# ipaddress's properties, most specific first (loopback and link-local are also private)
_KINDS = (
    ("is_unspecified", "an unspecified"),
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),  # not excluded by is_global
    ("is_reserved", "a reserved"),
    ("is_private", "a private"),
)


def _non_public(address: IPAddress) -> str | None:
    """How ``address`` is not public ("a private", ...), or None when it is."""
    for attribute, kind in _KINDS:
        if getattr(address, attribute):
            return kind
    return None if address.is_global else "a non-public"


async def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    try:
        async with asyncio.timeout(RESOLVE_S):
            found = [_unmapped(ipaddress.ip_address(a)) for a in await _lookup(host, port)]
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        message = f"{HEADER}: cannot resolve {host} ({reason})"
        raise CallbackRefused(message, transient=True) from None
    if not found:
        raise CallbackRefused(f"{HEADER}: {host} has no address", transient=True)
    return tuple(dict.fromkeys(found))


async def _lookup(host: str, port: int) -> list[str]:
    """The resolver's addresses for ``host``, as text without IPv6 zone ids."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%")[0] for info in infos]


@dataclass(frozen=True)
class Delivery:
    """How a delivery ended: ``status_code`` is the receiver's last answer (None if it never
    answered), ``last_error`` says why the last attempt failed ("" once delivered)."""

    delivered: bool
    attempts: int
    last_error: str
    status_code: int | None
    elapsed_s: float


class _Retry(Exception):
    """An attempt failed in a way worth trying again; ``wait_s`` is the receiver's
    Retry-After, if it gave one."""

    def __init__(self, message: str, status_code: int | None, wait_s: float = 0.0) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.wait_s = wait_s


class _GiveUp(Exception):
    def __init__(self, message: str, status_code: int | None) -> None:
        super().__init__(message)
        self.status_code = status_code


class CallbackSender:
    """Delivers results from :meth:`submit` (or :meth:`deliver`) until :meth:`close`, each
    in a task the sender owns; one log line per delivery, naming the host only (a callback
    URL may carry a token in its query) and never the body."""

    def __init__(self, policy: CallbackPolicy) -> None:
        self.policy = policy
        self._tasks: set[asyncio.Task[Delivery]] = set()
        # No keep-alive: a kept TLS connection to an address could otherwise carry a
        # request for another name served there, under the first name's certificate.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(SEND_S, connect=CONNECT_S),
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,  # a proxy would connect to the name, not the checked address
        )

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(
        self,
        url: str,
        call_id: str,
        function: str,
        status: int,
        duration_s: float,
        body: bytes,
        content_type: str,
    ) -> asyncio.Task[Delivery]:
        """Start delivering in the background. ``status`` is the function's HTTP status
        code (sent as X-Function-Status); ``duration_s`` how long the call took."""
        headers = {
            "X-Call-Id": call_id,
            "X-Function-Name": function,
            "X-Function-Status": str(status),
            "X-Duration-Seconds": f"{duration_s:f}",
            "User-Agent": USER_AGENT,
        }
        if content_type:
            headers["Content-Type"] = content_type
        task = asyncio.get_running_loop().create_task(self._deliver(url, headers, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def deliver(
        self,
        url: str,
        call_id: str,
        function: str,
        status: int,
        duration_s: float,
        body: bytes,
        content_type: str,
    ) -> Delivery:
        """:meth:`submit` and wait for the outcome (at most about ``DEADLINE_S``)."""
        return await self.submit(url, call_id, function, status, duration_s, body, content_type)

    async def close(self) -> None:
        """Cancel the deliveries still running, wait for them (bounded), close the client."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        await self._client.aclose()

    async def _deliver(self, url: str, headers: dict[str, str], body: bytes) -> Delivery:
        started = time.monotonic()
        host = _log_host(url)
        call_id = headers["X-Call-Id"]
        attempts, error, status_code = 0, "", None
        try:
            async with asyncio.timeout(DEADLINE_S):
                for attempts in range(1, len(BACKOFF_S) + 2):
                    try:
                        status_code = await self._attempt(url, headers, body, attempts)
                    except _Retry as retry:
                        error, status_code = str(retry), retry.status_code
                        if attempts > len(BACKOFF_S):
                            break
                        wait = _wait_s(attempts, retry.wait_s, started)
                        log.debug("↻ callback %s call=%s attempt %d: %s; next in %.2fs",
                                  host, call_id, attempts, error, wait)  # fmt: skip
                        await asyncio.sleep(wait)
                        continue
                    return self._finish(host, call_id, started, attempts, "", status_code)
        except _GiveUp as exc:
            error, status_code = str(exc), exc.status_code
        except TimeoutError:
            error = f"gave up after {DEADLINE_S:g} s" + (f" ({error})" if error else "")
        except asyncio.CancelledError:
            log.warning("! callback %s call=%s cancelled at shutdown", host, call_id)
            raise
        return self._finish(host, call_id, started, attempts, error, status_code)

    async def _attempt(self, url: str, headers: dict[str, str], body: bytes, n: int) -> int:
        """One POST to one checked address; the receiver's status when it took the result."""
        try:
            target = await self.policy.resolve(url)
        except CallbackRefused as exc:
            if exc.transient:
                raise _Retry(exc.message, None) from None
            raise _GiveUp(exc.message, None) from None
        address = target.addresses[(n - 1) % len(target.addresses)]
        request = self._client.build_request(
            "POST",
            httpx.URL(url).copy_with(host=str(address)),
            headers={**headers, "Host": _host_header(target)},
            content=body,
            extensions={"sni_hostname": target.host} if target.url.scheme == "https" else {},
        )
        try:
            response = await self._client.send(request)
            await response.aclose()
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}".rstrip(": "), None) from None
        return _judge(response)

    def _finish(
        self,
        host: str,
        call_id: str,
        started: float,
        attempts: int,
        error: str,
        status_code: int | None,
    ) -> Delivery:
        elapsed = time.monotonic() - started
        if error:
            log.warning(
                "! callback %s call=%s failed after %d attempt(s) in %.2fs: %s",
                host, call_id, attempts, elapsed, error,
            )  # fmt: skip
        else:
            log.info(
                "→ callback %s call=%s %s after %d attempt(s) in %.2fs",
                host, call_id, status_code, attempts, elapsed,
            )  # fmt: skip
        return Delivery(not error, attempts, error, status_code, elapsed)


def _judge(response: httpx.Response) -> int:
    status = response.status_code
    if 200 <= status < 300:
        return status
    if status == 429 or status >= 500:
        raise _Retry(f"answered {status}", status, _retry_after_s(response))
    if 300 <= status < 400:
        raise _GiveUp(f"answered {status} (redirects are not followed)", status)
    raise _GiveUp(f"answered {status}", status)


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return min(float(value), RETRY_AFTER_MAX_S) if value.isdigit() else 0.0


def _wait_s(attempt: int, retry_after_s: float, started: float) -> float:
    """The wait before the next attempt: the backoff, or longer if the receiver asked; never
    past the deadline (which then ends the delivery)."""
    wait = max(BACKOFF_S[attempt - 1], retry_after_s)
    return min(wait, max(0.0, DEADLINE_S - (time.monotonic() - started)))


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.url.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _log_host(url: str) -> str:
    """The URL's host and port, for logs: never its path, query or user info."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    except ValueError:
        return "(bad url)"
