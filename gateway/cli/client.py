"""The client commands (``invoke``, ``ls``, ``scale``): HTTP requests to a gateway, and their
output for a terminal. Raises :class:`ClientError` with a readable message on failure."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from gateway.auth import read_token, token_path
from gateway.errors import GatewayError
from gateway.settings import Settings

TIMEOUT_S = 60.0


class ClientError(GatewayError, code="client_error"):
    """A client command could not get its answer (no token, the gateway unreachable, a
    refusal); the message says which."""


def admin_token(settings: Settings) -> str:
    """EDGEFAAS_ADMIN_TOKEN, else the token file of the local node's data dir."""
    if settings.admin_token:
        return settings.admin_token
    path = token_path(settings.resolved_data_dir())
    try:
        return read_token(path)
    except OSError:
        raise ClientError(
            f"no admin token: set EDGEFAAS_ADMIN_TOKEN, or run this on the node (looked for {path})"
        ) from None


def request(
    settings: Settings,
    method: str,
    path: str,
    *,
    admin: bool = False,
    content: bytes | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    all_headers = dict(headers or {})
    if admin:
        all_headers["Authorization"] = f"Bearer {admin_token(settings)}"
    url = settings.gateway.rstrip("/") + path
    try:
        with httpx.Client(timeout=TIMEOUT_S) as client:
            return client.request(method, url, content=content, json=json_body, headers=all_headers)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the gateway at {settings.gateway}: {exc}") from None


def check(response: httpx.Response) -> httpx.Response:
    """Raise :class:`ClientError` with the gateway's own message for an error status."""
    if response.status_code < 400:
        return response
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    raise ClientError(f"{response.status_code}: {message}")


def read_data(data: str | None, stdin: BinaryIO) -> bytes:
    """``--data``: ``@file`` reads a file, ``-`` reads stdin, anything else is sent as is."""
    if data is None:
        return b""
    if data == "-":
        return stdin.read()
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ClientError(f"--data {data}: cannot read {path}: {exc.strerror}") from None
    return data.encode()


def invoke(
    settings: Settings, name: str, data: str | None, method: str, header_args: list[str]
) -> httpx.Response:
    headers = {}
    for item in header_args:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ClientError(f"--header {item!r}: expected NAME:VALUE")
        headers[key.strip()] = value.strip()
    body = read_data(data, sys.stdin.buffer)
    return check(request(settings, method, f"/function/{name}", content=body, headers=headers))


def list_functions(settings: Settings) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = check(
        request(settings, "GET", "/system/functions", admin=True)
    ).json()
    return result


def node_info(settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = check(request(settings, "GET", "/system/info", admin=True)).json()
    return result


def scale(settings: Settings, name: str, body: dict[str, int]) -> dict[str, Any]:
    result: dict[str, Any] = check(
        request(settings, "POST", f"/system/scale-function/{name}", admin=True, json_body=body)
    ).json()
    return result


def nodes(settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = check(request(settings, "GET", "/system/nodes", admin=True)).json()
    return result


def remove(settings: Settings, name: str) -> dict[str, Any]:
    result: dict[str, Any] = check(
        request(settings, "DELETE", f"/system/functions/{name}", admin=True)
    ).json()
    return result


def rollback(settings: Settings, name: str, to_version: int | None) -> dict[str, Any]:
    body = {} if to_version is None else {"to": to_version}
    result: dict[str, Any] = check(
        request(settings, "POST", f"/system/functions/{name}/rollback", admin=True, json_body=body)
    ).json()
    return result


def dead_letters(settings: Settings, name: str | None) -> dict[str, Any]:
    path = f"/system/dead-letters/{name}" if name else "/system/dead-letters"
    result: dict[str, Any] = check(request(settings, "GET", path, admin=True)).json()
    return result


def redrive(settings: Settings, name: str) -> dict[str, Any]:
    path = f"/system/dead-letters/{name}/redrive"
    result: dict[str, Any] = check(request(settings, "POST", path, admin=True)).json()
    return result


def format_dead_letters(letters: dict[str, Any]) -> str:
    """``edgefaas dead-letters`` output: one row per dead letter, oldest first."""
    rows = [("CALL ID", "FUNCTION", "FAILED", "ATTEMPTS", "LAST ERROR")]
    for letter in letters.get("dead_letters", []):
        failed = letter.get("failed_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failed)) if failed else "-"
        error = " ".join(str(letter.get("last_error") or "").split())[:100]
        rows.append(
            (
                letter["call_id"],
                letter["function"],
                when,
                str(letter.get("attempts", 0)),
                error,
            )
        )
    shown = len(rows) - 1
    total = letters.get("count", shown)
    return _columns(rows) + (f"\n{shown} of {total} shown" if total > shown else "")


def format_nodes(mesh: dict[str, Any]) -> str:
    """``edgefaas nodes`` output: one row per live node."""
    header = ("NODE", "ROLE", "STATE", "URL", "SANDBOX", "FUNCTIONS", "BUSY/READY", "QUEUE")
    rows = [(*header, "HEARTBEAT")]
    warnings = []
    now = time.time()
    for record in mesh["nodes"]:
        functions = record.get("functions") or {}
        names = []
        busy = ready = queue = 0
        for name, status in sorted(functions.items()):
            version = status.get("version")
            failed = " FAILED" if status.get("failed") else ""
            names.append(f"{name}@v{version}{failed}" if version else f"{name}{failed}")
            workers = status.get("workers") or {}
            busy += workers.get("busy", 0)
            ready += workers.get("ready", 0)
            queue += status.get("queue_depth", 0)
        state = "degraded" if record.get("degraded") else "ok"
        age = now - float(record.get("heartbeat_at", now))
        sandbox = record.get("sandbox") or {}
        if sandbox.get("warning"):
            warnings.append(f"warning: {record['name']}: {sandbox['warning']}")
        rows.append(
            (
                record["name"],
                record.get("role", "?"),
                state,
                record.get("url", "?"),
                _sandbox_cell(sandbox),
                " ".join(names) or "-",
                f"{busy}/{ready}",
                str(queue),
                f"{age:.1f}s ago",
            )
        )
    table = _columns(rows)
    if mesh.get("mesh") != "ok":
        table += f"\nmesh: {mesh.get('mesh')} — showing this node only"
    return "\n".join([table, *warnings])


def _sandbox_cell(sandbox: dict[str, Any]) -> str:
    """``on (cgroup v1)``, ``off`` (asked for), ``NONE`` (wanted, but the node cannot)."""
    if not sandbox:
        return "?"
    if sandbox.get("active"):
        return f"on (cgroup {sandbox['cgroups']})" if sandbox.get("cgroups") else "on"
    return "off" if sandbox.get("mode") == "off" else "NONE"


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_table(functions: list[dict[str, Any]]) -> str:
    """``edgefaas ls`` output: one row per function."""
    header = (
        "NAME",
        "STATE",
        "READY",
        "BUSY",
        "STARTING",
        "MIN",
        "MAX",
        "QUEUE",
        "CALLS",
        "ERRORS",
        "MEMORY",
        "CPU",
        "SANDBOX",
        "LAST ERROR",
    )
    rows = [header]
    for f in functions:
        c = f["counters"]
        errors = c["function_errors"] + c["soft_timeouts"] + c["hard_timeouts"] + c["crashes"]
        last = (f["last_error"] or {}).get("message", "")
        rows.append(
            (
                f["name"],
                f["state"],
                str(f["workers"]["ready"]),
                str(f["workers"]["busy"]),
                str(f["workers"]["starting"]),
                str(f["min"]),
                str(f["max"]),
                str(f["queue_depth"]),
                str(c["calls"]),
                str(errors),
                *_usage_cells(f.get("sandbox")),
                last[:60],
            )
        )
    return _columns(rows)


def _usage_cells(sandbox: dict[str, Any] | None) -> tuple[str, str, str]:
    """Memory (MiB) and CPU (seconds) from the function's cgroups, and its sandbox."""
    if not sandbox:
        return "-", "-", "none"
    memory = f"{sandbox['memory_bytes'] / 1048576:.0f}M"
    where = "no network" if sandbox["network"] == "none" else "host network"
    return memory, f"{sandbox['cpu_seconds']:.1f}s", f"uid {sandbox['uid']}, {where}"


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2)
