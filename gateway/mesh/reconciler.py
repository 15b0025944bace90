"""Bring this node's pools to the mesh's desired state, without dropping a call.

For each function whose desired digest differs from the one it runs, the node gets the
bundle (from its own store, else from a peer that holds it), verifies and unpacks it, starts
a pool of the new version next to the old one, and — once the new pool has its warm
workers — routes calls to it in one step and drains the old pool. If the new version does
not start, the old one keeps serving and the failure is reported until a new version is
desired. Functions no longer desired are unrouted and drained.

Each function switches in a task of its own: a slow fetch or a slow start of one function
never holds up another, nor the next reconcile (a newer version cancels the switch to an
older one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

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
RETRYABLE = (MeshError, RedisError)  # no holder reachable yet, or Redis slow: try again


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


@dataclass
class Switch:
    entry: DesiredEntry
    task: asyncio.Task[None]


class Reconciler:
    """Applies desired entries to the supervisor's pools."""

    def __init__(
        self,
        supervisor: Supervisor,
        store: BundleStore,
        fetcher: Fetcher,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.supervisor = supervisor
        self.store = store
        self.fetcher = fetcher
        self.on_change = on_change  # called after every switch or removal (heartbeat now)
        self.running: dict[str, Running] = {}
        self.failures: dict[str, Failure] = {}
        self.generation = 0  # of the desired state last applied (kept in applied.json)
        self._switching: dict[str, Switch] = {}
        self._saved: dict[str, Any] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()

    def apply(self, desired: dict[str, DesiredEntry], peers: Peers, generation: int) -> None:
        """Start making the node run exactly ``desired``; switches go on in the background
        (await :meth:`settle` to wait for them)."""
        self.generation = max(self.generation, generation)
        for name, entry in desired.items():
            if self._needs(name, entry):
                self._start_switch(entry, peers)
        for name in [n for n in self._switching if n not in desired]:
            self._switching.pop(name).task.cancel()
        for name in [n for n in self.running if n not in desired]:
            self._remove(name)
        for name in [n for n in self.failures if n not in desired]:
            del self.failures[name]
        self._save()

    async def settle(self) -> None:
        """Wait until every switch under way has finished (or failed)."""
        while self._switching:
            await asyncio.gather(
                *(s.task for s in list(self._switching.values())), return_exceptions=True
            )

    async def close(self) -> None:
        for switch in self._switching.values():
            switch.task.cancel()
        await self.settle()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

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
                "slots": pool["slots"],
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

    def retries_due(self) -> bool:
        """Whether a failed fetch should be tried again now."""
        now = time.monotonic()
        return any(f.retry_at is not None and now >= f.retry_at for f in self.failures.values())

    def _needs(self, name: str, entry: DesiredEntry) -> bool:
        switch = self._switching.get(name)
        if switch is not None and switch.entry.digest == entry.digest:
            return False  # already on its way
        running = self.running.get(name)
        if running is not None and running.entry.digest == entry.digest:
            if running.entry.version != entry.version:  # a rollback to the running digest
                running.entry = entry
            if _healthy(running.pool):  # a routed version that fails stays reported
                self.failures.pop(name, None)
            return switch is not None  # cancel a switch away from what runs
        failure = self.failures.get(name)
        if failure is None or failure.version != entry.version:
            return True
        return failure.retry_at is not None and time.monotonic() >= failure.retry_at

    def _start_switch(self, entry: DesiredEntry, peers: Peers) -> None:
        previous = self._switching.pop(entry.name, None)
        if previous is not None:
            previous.task.cancel()
        running = self.running.get(entry.name)
        if running is not None and running.entry.digest == entry.digest:
            return  # the cancelled switch was away from what runs; nothing more to do
        task = asyncio.get_running_loop().create_task(self._switch(entry, peers))
        switch = Switch(entry, task)
        self._switching[entry.name] = switch

        def done(_: asyncio.Task[None]) -> None:
            if self._switching.get(entry.name) is switch:
                del self._switching[entry.name]

        task.add_done_callback(done)

    async def _switch(self, entry: DesiredEntry, peers: Peers) -> None:
        started = time.monotonic()
        try:
            pool, problem = await self._prepare(entry, peers)
        except asyncio.CancelledError:
            log.info(
                "function %s: switch to version %d cancelled (a newer one is desired)",
                entry.name,
                entry.version,
            )
            raise
        except RETRYABLE as exc:
            self._failed(entry, exc, retry=True)
            self.on_change()
            return
        except Exception as exc:
            self._failed(entry, exc)
            self.on_change()
            return
        if not self._still_current(entry):
            # Cancelled for a newer version, but the cancellation was lost on the way (a
            # Redis call's timeout can swallow it): routing this pool now would switch the
            # function back to an older version after the newer one took over.
            log.info(
                "function %s: version %d is no longer wanted; not switching to it",
                entry.name,
                entry.version,
            )
            await self.supervisor.discard(pool)
            return
        old = self.supervisor.pools.get(entry.name)
        if problem and old is not None and _healthy(old):
            await self.supervisor.discard(pool)
            self._failed(entry, RegistryError(problem))
            self.on_change()
            return
        # Route even a failing version when nothing healthy serves the function: its calls
        # then get 503 with the function's own error, and its pool backs off, then gives up.
        replaced = self.supervisor.route(pool)
        self.running[entry.name] = Running(entry, pool)
        if problem:
            self._failed(entry, RegistryError(problem))
        else:
            self.failures.pop(entry.name, None)
        if replaced is not None:
            self.supervisor.retire(replaced)
        self._save()
        self.on_change()
        log.info(
            "function %s: now version %d (%s), switched in %.0f ms",
            entry.name,
            entry.version,
            entry.digest[:12],
            (time.monotonic() - started) * 1000,
        )

    def _still_current(self, entry: DesiredEntry) -> bool:
        """Whether the running task is still the switch wanted for ``entry``'s function."""
        task = asyncio.current_task()
        switch = self._switching.get(entry.name)
        return (
            task is not None
            and not task.cancelling()
            and switch is not None
            and switch.task is task
        )

    def _failed(self, entry: DesiredEntry, exc: BaseException, retry: bool = False) -> None:
        previous = self.failures.get(entry.name)
        attempts = previous.attempts + 1 if previous and previous.version == entry.version else 1
        if isinstance(exc, RegistryError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
            if not retry:
                log.error("function %s: version %d failed", entry.name, entry.version, exc_info=exc)
        delay = min(FETCH_RETRY_MAX_S, 0.25 * 2 ** (attempts - 1))
        retry_at = time.monotonic() + delay if retry else None
        if retry:
            log.warning(
                "function %s: version %d (%s) not fetched yet: %s; retrying in %g s",
                entry.name,
                entry.version,
                entry.digest[:12],
                message,
                delay,
            )
        else:
            log.error(
                "function %s: version %d (%s) does not run here: %s",
                entry.name,
                entry.version,
                entry.digest[:12],
                message,
            )
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
        pool = await self.supervisor.launch(spec, entry.digest)
        try:
            return pool, await _until_warm(pool)
        except BaseException:
            await self.supervisor.discard(pool)
            raise

    def _remove(self, name: str) -> None:
        running = self.running.pop(name)
        self.supervisor.unroute(name)
        self.supervisor.retire(running.pool)
        self.on_change()
        log.info("function %s: removed", name)

    def _save(self) -> None:
        """Record what runs here, in the background (it flushes to disk)."""
        applied = {
            "generation": self.generation,
            "functions": {name: r.entry.to_dict() for name, r in self.running.items()},
        }
        if applied == self._saved:
            return
        self._saved = applied
        task = asyncio.get_running_loop().create_task(self._write_in_order(applied))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_in_order(self, applied: dict[str, Any]) -> None:
        async with self._write_lock:  # FIFO: the last state written is the last one saved
            await asyncio.to_thread(self._write, applied)

    def _write(self, applied: dict[str, Any]) -> None:
        try:
            self.store.save_applied(applied)
        except OSError as exc:
            log.warning(
                "could not record the running versions in %s: %s", self.store.applied_path, exc
            )


def entries_from_applied(applied: dict[str, Any]) -> dict[str, DesiredEntry]:
    """The entries a node last ran, from its store's ``applied.json`` (unreadable → none)."""
    entries = {}
    for name, item in (applied.get("functions") or {}).items():
        try:
            entries[name] = DesiredEntry.from_dict(item)
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed entry for %r in applied.json", name)
    return entries


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
