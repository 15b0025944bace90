"""One node: its settings, manifest, admin token, metrics and supervisor, opened and closed
together (the app's lifespan and the server runner both drive it)."""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.auth import load_or_create_token, token_path
from gateway.calllog import CallLog
from gateway.invoke import CallIds
from gateway.metrics import Metrics
from gateway.settings import Settings
from registry.specs import Manifest
from runtime.supervisor import Supervisor

log = logging.getLogger("edgefaas.gateway")


class Node:
    """Use as ``async with node:``; :meth:`close` is idempotent and may be forced."""

    def __init__(self, settings: Settings, manifest: Manifest | None) -> None:
        self.settings = settings
        self.manifest = manifest
        self.name = settings.node_name()
        self.data_dir = settings.resolved_data_dir()
        self.metrics = Metrics()
        specs = manifest.functions.values() if manifest else ()
        self.supervisor = Supervisor(specs, observer=self.metrics)
        self.metrics.watch_pools(self.supervisor.snapshot)
        self.call_ids = CallIds()
        self.call_log = CallLog() if settings.call_log else None
        self.admin_token = ""
        self.started_at = 0.0
        self._open = False

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
        if self.settings.admin_token.strip():
            self.admin_token = self.settings.admin_token.strip()
            log.info("admin token: from EDGEFAAS_ADMIN_TOKEN")
        else:
            self.admin_token = load_or_create_token(self.data_dir)
            log.info("admin token: in %s", token_path(self.data_dir))
        if self.call_log is not None:
            self.call_log.start()
        await self.supervisor.start()

    async def close(self, force: bool = False) -> None:
        await self.supervisor.close(force=force)
        if self.call_log is not None:
            await self.call_log.close()

    def info(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "role": "edge",
            "manifest": str(self.manifest.path) if self.manifest else None,
            "functions": len(self.supervisor.pools),
            "uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
        }
