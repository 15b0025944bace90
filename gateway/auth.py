"""The admin token: where it comes from, where it is kept, and how requests prove it.

The token is ``EDGEFAAS_ADMIN_TOKEN`` when set; otherwise it is generated at first start and
kept in ``DATA_DIR/admin-token`` (mode 0600), so later starts and local client commands
reuse it. The token itself is never logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from starlette.requests import Request

from gateway.errors import Forbidden, Unauthorized

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
