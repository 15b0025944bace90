"""One node: its settings, keys, metrics, supervisor and place in the mesh, opened and closed
together (the app's lifespan and the server runner both drive it).

Every function reaches the node through the mesh's desired state: a node started with a
manifest publishes it (signed with the node's key) to its mesh — its own embedded Redis by
default — and then runs what the mesh desires, like every other node.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from gateway.auth import LoginGuard, load_or_create_token, token_path
from gateway.calllog import CallLog
from gateway.invoke import CallIds
from gateway.jobs.service import AsyncCalls
from gateway.mesh.agent import MeshAgent, load_or_create_secret, load_or_create_signing_key
from gateway.mesh.peers import PeerView
from gateway.mesh.router import Router
from gateway.metrics import Metrics
from gateway.records.recorder import Recorder
from gateway.settings import Settings
from registry.redis_server import mask_password
from registry.signing import TrustedKeys
from registry.specs import Manifest
from runtime.sandbox.sandboxes import Sandboxes
from runtime.supervisor import Supervisor

log = logging.getLogger("edgefaas.gateway")


class Node:
    """Use as ``async with node:``; :meth:`close` is idempotent and may be forced."""

    def __init__(self, settings: Settings, manifest: Manifest | None) -> None:
        self.settings = settings
        self.manifest = manifest
        self.name = settings.node_name()
        self.data_dir = settings.resolved_data_dir()
        self.url = settings.advertise or _own_url(settings.host, settings.port)
        self.metrics = Metrics()
        cloud = settings.role == "cloud"
        self.sandboxes = Sandboxes(
            settings.sandbox,
            self.name,
            self.data_dir / "sandbox-root",
            settings.sandbox_uid_base,
        )
        self.supervisor = Supervisor(
            observer=self.metrics,
            pool_factor=settings.cloud_pool_factor if cloud else 1,
            sandboxes=self.sandboxes,
        )
        self.router = Router(
            self.name,
            settings.role,
            PeerView(self.name, self._live_records),
            self.metrics,
            cloud_url=settings.cloud_url,
            cloud_timeout_s=settings.cloud_timeout_s,
        )
        self.metrics.watch_pools(self.supervisor.snapshot)
        self.metrics.watch_sandboxes(self.sandboxes.usage_by_function)
        self.call_ids = CallIds()
        self.logins = LoginGuard(settings.login_failures)  # failed admin logins, by address
        self.call_log = CallLog() if settings.call_log else None
        self.recorder = Recorder(
            self.name,
            settings.role,
            settings.records_quota,
            self.data_dir,
            self.metrics.registry,
            self.router.cloud_node,
        )
        self.async_calls = AsyncCalls(
            self.name,
            self.supervisor.pools,
            self.recorder.buffer,
            self.metrics,
            callback_allow=settings.callback_allow,
            grace_s=settings.grace_s,
            cloud=cloud,
        )
        self.admin_token = ""
        self.started_at = 0.0
        self._mesh: MeshAgent | None = None
        self.serving = False
        self._open = False
        self._closed = False

    @property
    def mesh(self) -> MeshAgent:
        if self._mesh is None:
            raise RuntimeError("the node is not started")
        return self._mesh

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._open:
            return
        self._open = True
        self.started_at = time.time()
        self.admin_token = self._admin_token()
        warning = self.sandboxes.warning()
        if warning is not None:
            log.warning("%s (--sandbox %s)", warning, self.settings.sandbox)
        elif self.sandboxes.active:
            cgroups = self.sandboxes.status()["cgroups"]
            log.info("sandboxes: on (cgroup %s, uids from %d)", cgroups, self.sandboxes.uid_base)
        if self.call_log is not None:
            self.call_log.start()
        await self.supervisor.start()
        self._mesh = self._mesh_agent()
        self.router.mesh_key = self._mesh.mesh_key
        await self._mesh.start(self.manifest, self.record)
        redis = self._mesh.redis
        assert redis is not None  # connected (or degraded, retrying) after start
        await self.async_calls.start(redis, self._mesh.redis_url, self.settings.key_prefix)
        self.router.start()
        await self.recorder.start(redis, self._mesh.keys, self._mesh.mesh_key)

    async def now_serving(self) -> None:
        """The server listens: peers may fetch bundles from this node from now on."""
        self.serving = True
        if self._mesh is not None:
            await self._mesh.beat()

    async def close(self, force: bool = False) -> None:
        """Leave the mesh, then stop every pool (graceful unless ``force``)."""
        if self._mesh is not None and not self._closed:
            self._closed = True
            await self.async_calls.close(force)  # lets runs in flight settle, in Redis
            await self.recorder.close()  # a last flush, to the mesh's Redis
            await self.router.view.close()  # it reads the mesh's Redis
            await self._mesh.close()
        await self.supervisor.close(force=force)
        self.sandboxes.close()
        await self.router.close()
        if self.call_log is not None:
            await self.call_log.close()

    async def _live_records(self) -> list[dict[str, Any]]:
        return await self.mesh.live_nodes()

    def record(self) -> dict[str, Any]:
        """This node as the mesh sees it (its heartbeat record)."""
        mesh = self._mesh
        return {
            "name": self.name,
            "role": self.settings.role,
            "url": self.url,
            "capacity": {"cpus": os.cpu_count() or 1},
            "functions": mesh.reconciler.status() if mesh else {},
            "degraded": bool(mesh and mesh.degraded_since is not None),
            "sandbox": self.sandboxes.status(),
            "serving": self.serving,
            "started_at": self.started_at,
            "heartbeat_at": time.time(),
        }

    def info(self) -> dict[str, Any]:
        mesh = self._mesh
        return {
            "node": self.name,
            "role": self.settings.role,
            "url": self.url,
            "manifest": str(self.manifest.path) if self.manifest else None,
            "redis": mask_password(mesh.redis_url) if mesh else None,
            "mesh": mesh.status() if mesh else None,
            "signing_key_id": mesh.signing_key.key_id if mesh else None,
            "trusted_key_ids": mesh.trusted.key_ids if mesh else [],
            "functions": len(self.supervisor.pools),
            "sandbox": self.sandboxes.status(),
            "uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
        }

    def _admin_token(self) -> str:
        if self.settings.admin_token.strip():
            log.info("admin token: from EDGEFAAS_ADMIN_TOKEN")
            return self.settings.admin_token.strip()
        token = load_or_create_token(self.data_dir)
        log.info("admin token: in %s", token_path(self.data_dir))
        return token

    def _mesh_agent(self) -> MeshAgent:
        settings = self.settings
        signing_key = load_or_create_signing_key(
            settings.signing_key or self.data_dir / "signing.key"
        )
        paths = [Path(p.strip()) for p in settings.trusted_keys.split(",") if p.strip()]
        trusted = TrustedKeys.load(paths).with_key(signing_key.public)
        mesh_key = settings.mesh_key.strip().encode() or load_or_create_secret(
            self.data_dir / "mesh-key"
        )
        return MeshAgent(
            self.name,
            self.data_dir,
            self.supervisor,
            redis_url=settings.redis_url,
            key_prefix=settings.key_prefix,
            signing_key=signing_key,
            trusted=trusted,
            mesh_key=mesh_key,
        )


def _own_url(host: str, port: int) -> str:
    """Where peers reach this node when --advertise is not given: a wildcard address is
    no address for a peer, so the host name stands in for it."""
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 (compared, not bound)
        host = socket.gethostname()
        log.info("advertising http://%s:%d to peers (set --advertise to choose)", host, port)
    return f"http://{host}:{port}"
