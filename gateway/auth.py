"""The admin token: where it comes from, where it is kept, and how requests prove it.

The token is ``EDGEFAAS_ADMIN_TOKEN`` when set; otherwise it is generated at first start and
kept in ``DATA_DIR/admin-token`` (mode 0600), so later starts and local client commands
reuse it. The token itself is never logged.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
from collections import OrderedDict, deque
from pathlib import Path

from starlette.requests import Request

from gateway.errors import Forbidden, TooManyLogins, Unauthorized

FAILURE_WINDOW_S = 60.0
ADDRESSES_TRACKED = 10_000

TOKEN_FILE = "admin-token"  # noqa: S105 (a file name, not a secret)


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """Read the token kept in ``data_dir``, creating it (0600, atomically) if missing."""
    path = token_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return read_token(path)


def read_token(path: Path) -> str:
    token = path.read_text(encoding="ascii").strip()
    if not token:
        raise Unauthorized(f"the admin token file {path} is empty")
    return token


def check_bearer(request: Request, token: str) -> None:
    """Raise 401 without credentials, 403 with the wrong ones."""
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise Unauthorized("admin route: send 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("admin route: the Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("admin route: the token is not valid for this node")


class LoginGuard:
    """Counts failed admin logins — a wrong token; a request without one is no attempt, and
    gets 401 — per client address. Beyond ``allowed`` within ``FAILURE_WINDOW_S``, a
    wrong token from that address is answered 429 with
    ``Retry-After`` — the right token is still accepted, so an admin is never locked out by
    someone else's guessing (the token is 256 random bits: the limit spares the node's log and
    CPU, and tells a client it is being refused). Memory is bounded: the least recently
    failing addresses are forgotten first."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, request: Request, token: str) -> None:
        address = request.client.host if request.client else "?"
        try:
            check_bearer(request, token)
        except Forbidden:
            retry_after = self._failed(address, time.monotonic())
            if retry_after is not None:
                raise TooManyLogins(
                    f"admin route: too many failed logins from {address}; try again in "
                    f"{retry_after} s",
                    retry_after,
                ) from None
            raise

    def _failed(self, address: str, now: float) -> int | None:
        """Count a failure; seconds until the address may fail again, when over the limit."""
        failures = self._failures.pop(address, None) or deque(maxlen=self.allowed + 1)
        failures.append(now)
        self._failures[address] = failures
        while len(self._failures) > ADDRESSES_TRACKED:
            self._failures.popitem(last=False)
        while failures and failures[0] < now - FAILURE_WINDOW_S:
            failures.popleft()
        if len(failures) <= self.allowed:
            return None
        return max(1, math.ceil(failures[0] + FAILURE_WINDOW_S - now))
