"""Deploying to a mesh from Python: upload signed bundles to a gateway, make them the desired
versions, and follow the rollout until every live node runs them.

    from registry.client import deploy_callable
    deploy_callable(lambda event: {"ok": True}, name="ping", gateway="http://127.0.0.1:8080",
                    token=..., signing_key=Path("edgefaas-signing.key"))

A cloudpickled callable runs on nodes with the same Python minor version as the deployer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from registry.bundle import SignedBundle, build_callable_bundle
from registry.errors import MeshError
from registry.signing import SigningKey

TIMEOUT_S = 60.0
UPLOAD_CHUNK_BYTES = 256 * 1024
Progress = Callable[[int, int], None]  # bytes sent, total


class MeshClient:
    """The admin API of one gateway, for deploying (sync)."""

    def __init__(self, gateway: str, token: str, timeout_s: float = TIMEOUT_S) -> None:
        self.gateway = gateway.rstrip("/")
        self._http = httpx.Client(
            base_url=self.gateway, timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def has_bundle(self, digest: str) -> bool:
        reply = self._send("HEAD", f"/system/bundles/{digest}")
        return reply.status_code == 200

    def upload(self, bundle: SignedBundle, progress: Progress | None = None) -> None:
        headers = {
            "X-Bundle-Signature": bundle.signature,
            "X-Bundle-Key": bundle.key_id,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(bundle.data)),
        }
        self._check(
            self._send(
                "PUT",
                f"/system/bundles/{bundle.digest}",
                content=_chunks(bundle.data, progress),
                headers=headers,
            )
        )

    def deploy(self, name: str, digest: str) -> dict[str, Any]:
        return self._json(
            self._send("POST", "/system/functions", json={"name": name, "digest": digest})
        )

    def remove(self, name: str) -> dict[str, Any]:
        return self._json(self._send("DELETE", f"/system/functions/{name}"))

    def rollback(self, name: str, to_version: int | None) -> dict[str, Any]:
        body = {} if to_version is None else {"to": to_version}
        return self._json(self._send("POST", f"/system/functions/{name}/rollback", json=body))

    def nodes(self) -> dict[str, Any]:
        return self._json(self._send("GET", "/system/nodes"))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise MeshError(f"cannot reach the gateway at {self.gateway}: {exc}") from None

    def _json(self, reply: httpx.Response) -> dict[str, Any]:
        result: dict[str, Any] = self._check(reply).json()
        return result

    def _check(self, reply: httpx.Response) -> httpx.Response:
        if reply.status_code < 400:
            return reply
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text.strip() or reply.reason_phrase
        raise MeshError(
            f"{reply.request.method} {reply.request.url.path}: {reply.status_code} {message}"
        )


def _chunks(data: bytes, progress: Progress | None) -> Iterator[bytes]:
    for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
        chunk = data[start : start + UPLOAD_CHUNK_BYTES]
        yield chunk
        if progress is not None:
            progress(start + len(chunk), len(data))


def ship(client: MeshClient, bundle: SignedBundle, progress: Progress | None = None) -> bool:
    """Upload ``bundle`` unless the gateway holds it already; True if it was uploaded."""
    if client.has_bundle(bundle.digest):
        return False
    client.upload(bundle, progress)
    return True


@dataclass
class Rollout:
    """Where each live node stands with the deployed digests."""

    targets: dict[str, str]  # function → digest
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)  # node → function → state
    failures: dict[str, str] = field(default_factory=dict)  # "node/function" → message
    waiting: dict[str, str] = field(default_factory=dict)  # retrying: "node/function" → why

    @property
    def done(self) -> bool:
        return bool(self.nodes) and all(
            state == "running" for per_node in self.nodes.values() for state in per_node.values()
        )


def rollout_state(client: MeshClient, targets: dict[str, str]) -> Rollout:
    """One look at the mesh: for every live node and target, ``running``, ``failed`` or
    ``pending``."""
    rollout = Rollout(targets)
    for record in client.nodes()["nodes"]:
        states = {}
        for name, digest in targets.items():
            status = (record.get("functions") or {}).get(name) or {}
            failed = status.get("failed") or {}
            if failed.get("digest") == digest and failed.get("retrying"):
                states[name] = "pending"
                rollout.waiting[f"{record['name']}/{name}"] = str(failed.get("message"))
            elif failed.get("digest") == digest:
                states[name] = "failed"
                rollout.failures[f"{record['name']}/{name}"] = str(failed.get("message"))
            elif status.get("digest") == digest:
                states[name] = "running"
            else:
                states[name] = "pending"
        rollout.nodes[record["name"]] = states
    return rollout


def wait_for_rollout(
    client: MeshClient,
    targets: dict[str, str],
    timeout_s: float,
    on_change: Callable[[Rollout], None] | None = None,
) -> Rollout:
    """Poll until every live node runs every target (or one failed, or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rollout = rollout_state(client, targets)
        if on_change is not None:
            on_change(rollout)
        if rollout.done or rollout.failures or time.monotonic() > deadline:
            return rollout
        time.sleep(0.1)


def deploy_callable(
    fn: Callable[[Any], Any],
    *,
    name: str,
    gateway: str = "http://127.0.0.1:8080",
    token: str | None = None,
    signing_key: SigningKey | Path,
    wait_s: float = 30.0,
    **settings: Any,
) -> dict[str, Any]:
    """Deploy a Python callable as function ``name``: cloudpickle it into a bundle, sign it,
    upload it, make it the desired version and wait (up to ``wait_s``) until every live
    node runs it. ``settings`` (see :func:`~registry.bundle.build_callable_bundle`):
    ``pool``, ``spill``, ``async_policy``, ``timeout_s``, ``memory_mb``, ``env``,
    ``triggers``. The token defaults to ``EDGEFAAS_ADMIN_TOKEN``."""
    key = signing_key if isinstance(signing_key, SigningKey) else SigningKey.load(signing_key)
    admin = token or os.environ.get("EDGEFAAS_ADMIN_TOKEN", "")
    if not admin:
        raise MeshError("no admin token: pass token=... or set EDGEFAAS_ADMIN_TOKEN")
    bundle = build_callable_bundle(fn, name, **settings).sign(key)
    with MeshClient(gateway, admin) as client:
        ship(client, bundle)
        entry = client.deploy(name, bundle.digest)
        rollout = wait_for_rollout(client, {name: bundle.digest}, wait_s)
    if rollout.failures:
        raise MeshError("; ".join(f"{where}: {why}" for where, why in rollout.failures.items()))
    if not rollout.done:
        waiting = "; ".join(f"{where}: {why}" for where, why in rollout.waiting.items())
        raise MeshError(
            f"{name} version {entry['version']} did not reach every live node "
            f"within {wait_s:g} s" + (f" ({waiting})" if waiting else "")
        )
    return entry
