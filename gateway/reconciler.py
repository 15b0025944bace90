"""Bring this node's pools to the mesh's desired state, without dropping a call.

For each function whose desired digest differs from the one it runs, the node gets the
bundle (from its own store, else from a peer that holds it), verifies and unpacks it, starts
a pool of the new version next to the old one, and — once the new pool has its warm
workers — routes calls to it in one step and drains the old pool. If the new version does
not start, the old one keeps serving and the failure is reported until a new version is
desired. Functions no longer desired are unrouted and drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from registry.desired import DesiredEntry
from registry.errors import MeshError, RegistryError
from registry.fetch import Fetcher
from registry.store import BundleMeta, BundleStore
from runtime.defaults import INIT_TIMEOUT_S
from runtime.pool import WarmPool
from runtime.states import PoolState
from runtime.supervisor import Supervisor

log = logging.getLogger("edgefaas.gateway")

FETCH_RETRY_MAX_S = 10.0


class Peers(Protocol):
    """Where bundles come from, and where this node says it holds them (the mesh)."""

    async def holders_for(self, digest: str) -> dict[str, str]:
        """Nodes to fetch ``digest`` from: name → URL."""
        ...

    async def now_holding(self, digest: str) -> None:
        """Tell the mesh this node holds ``digest`` and will serve it to peers."""
        ...


@dataclass
class Running:
    entry: DesiredEntry
    pool: WarmPool


@dataclass
class Failure:
    digest: str
    version: int
    message: str
    at: float
    retry_at: float | None = None  # set when the cause may pass (no holder reachable yet)
    attempts: int = 1


class Reconciler:
    """Applies desired entries to the supervisor's pools, one reconcile at a time."""

    def __init__(self, supervisor: Supervisor, store: BundleStore, fetcher: Fetcher) -> None:
        self.supervisor = supervisor
        self.store = store
        self.fetcher = fetcher
        self.running: dict[str, Running] = {}
        self.failures: dict[str, Failure] = {}
        self._lock = asyncio.Lock()

    async def apply(self, desired: dict[str, DesiredEntry], peers: Peers) -> None:
        """Make the node run exactly ``desired`` (as far as each version starts)."""
        async with self._lock:
            changes = [entry for name, entry in desired.items() if self._needs(name, entry)]
            await asyncio.gather(*(self._switch(entry, peers) for entry in changes))
            for name in [n for n in self.running if n not in desired]:
                self._remove(name)
            for name in [n for n in self.failures if n not in desired]:
                del self.failures[name]
            self._save()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per function: what runs here, and what failed to start (if anything)."""
        report: dict[str, dict[str, Any]] = {}
        for name, running in self.running.items():
            pool = running.pool.snapshot()
            report[name] = {
                "digest": running.entry.digest,
                "version": running.entry.version,
                "state": pool["state"],
                "workers": pool["workers"],
                "in_flight": pool["in_flight"],
                "queue_depth": pool["queue_depth"],
            }
        for name, failure in self.failures.items():
            report.setdefault(name, {})["failed"] = {
                "digest": failure.digest,
                "version": failure.version,
                "message": failure.message,
                "at": failure.at,
                "retrying": failure.retry_at is not None,
            }
        return report

    def _needs(self, name: str, entry: DesiredEntry) -> bool:
        running = self.running.get(name)
        if running is not None and running.entry.digest == entry.digest:
            if running.entry.version != entry.version:  # a rollback to the running digest
                running.entry = entry
            self.failures.pop(name, None)
            return False
        failure = self.failures.get(name)
        if failure is None or failure.version != entry.version:
            return True
        return failure.retry_at is not None and time.monotonic() >= failure.retry_at

    def retries_due(self) -> bool:
        """Whether a failed fetch should be tried again now."""
        now = time.monotonic()
        return any(f.retry_at is not None and now >= f.retry_at for f in self.failures.values())

    async def _switch(self, entry: DesiredEntry, peers: Peers) -> None:
        started = time.monotonic()
        try:
            pool, problem = await self._prepare(entry, peers)
        except MeshError as exc:  # no holder could be reached: try again soon
            self._failed(entry, exc, retry=True)
            return
        except Exception as exc:
            self._failed(entry, exc)
            return
        old = self.supervisor.pools.get(entry.name)
        if problem and old is not None and _healthy(old):
            await self.supervisor.discard(pool)
            self._failed(entry, RegistryError(problem))
            return
        # Route even a failing version when nothing healthy serves the function: its calls
        # then get 503 with the function's own error, and its pool backs off, then gives up.
        self.supervisor.route(pool)
        self.running[entry.name] = Running(entry, pool)
        if problem:
            self._failed(entry, RegistryError(problem))
        else:
            self.failures.pop(entry.name, None)
        if old is not None:
            self.supervisor.retire(old)
        log.info(
            "function %s: now version %d (%s), switched in %.0f ms",
            entry.name,
            entry.version,
            entry.digest[:12],
            (time.monotonic() - started) * 1000,
        )

    def _failed(self, entry: DesiredEntry, exc: Exception, retry: bool = False) -> None:
        previous = self.failures.get(entry.name)
        attempts = previous.attempts + 1 if previous and previous.version == entry.version else 1
        if isinstance(exc, RegistryError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
            log.exception("function %s: version %d failed", entry.name, entry.version)
        if retry:
            log.warning(
                "function %s: version %d (%s) not fetched yet: %s; retrying",
                entry.name,
                entry.version,
                entry.digest[:12],
                message,
            )
        else:
            log.error(
                "function %s: version %d (%s) does not run here: %s",
                entry.name,
                entry.version,
                entry.digest[:12],
                message,
            )
        delay = min(FETCH_RETRY_MAX_S, 0.25 * 2 ** (attempts - 1))
        retry_at = time.monotonic() + delay if retry else None
        self.failures[entry.name] = Failure(
            entry.digest, entry.version, message, time.time(), retry_at, attempts
        )

    async def _prepare(self, entry: DesiredEntry, peers: Peers) -> tuple[WarmPool, str]:
        """Fetch, verify, unpack and warm the new version. Returns its pool and, if the
        version failed to start, why; raises if it could not even be unpacked."""
        if not self.store.has(entry.digest):
            meta = BundleMeta(entry.signature, entry.key_id)
            origin = await self.fetcher.fetch(
                entry.digest, meta, await peers.holders_for(entry.digest)
            )
            log.info(
                "function %s: fetched bundle %s from %s", entry.name, entry.digest[:12], origin
            )
        spec = await asyncio.to_thread(self.store.unpack, entry.digest)
        await peers.now_holding(entry.digest)
        if spec.name != entry.name:
            raise RegistryError(
                f"bundle {entry.digest[:12]} holds function {spec.name!r}, not {entry.name!r}"
            )
        pool = await self.supervisor.launch(spec)
        try:
            return pool, await _until_warm(pool)
        except BaseException:
            await self.supervisor.discard(pool)
            raise

    def _remove(self, name: str) -> None:
        running = self.running.pop(name)
        self.supervisor.unroute(name)
        self.supervisor.retire(running.pool)
        log.info("function %s: removed", name)

    def _save(self) -> None:
        applied = {
            name: {
                "digest": r.entry.digest,
                "version": r.entry.version,
                "signature": r.entry.signature,
                "key_id": r.entry.key_id,
                "triggers": r.entry.triggers,
            }
            for name, r in self.running.items()
        }
        try:
            self.store.save_applied(applied)
        except OSError as exc:
            log.warning(
                "could not record the running versions in %s: %s", self.store.applied_path, exc
            )


def entries_from_applied(applied: dict[str, Any]) -> dict[str, DesiredEntry]:
    """The entries a node last ran, from its store's ``applied.json``."""
    return {
        name: DesiredEntry(
            name,
            item["digest"],
            int(item["version"]),
            item["signature"],
            item["key_id"],
            list(item.get("triggers", [])),
        )
        for name, item in applied.items()
    }


def _healthy(pool: WarmPool) -> bool:
    return pool.state is PoolState.RUNNING and (pool.serving_count() > 0 or pool.min == 0)


async def _until_warm(pool: WarmPool) -> str:
    """Wait until the pool has its ``min`` workers serving (or has loaded, for min 0);
    return "" then, or why it failed to start."""
    deadline = time.monotonic() + INIT_TIMEOUT_S
    while True:
        if pool.state in (PoolState.BACKOFF, PoolState.FATAL):
            error = pool.last_error["message"] if pool.last_error else "it failed to start"
            return f"the new version failed to start: {error}"
        if pool.state is PoolState.RUNNING and pool.serving_count() >= pool.min:
            return ""
        if time.monotonic() > deadline:
            return f"the new version was not ready within {INIT_TIMEOUT_S:g} s"
        await asyncio.sleep(0.01)
