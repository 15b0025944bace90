"""The node's supervisor: owns every warm pool, ticks their housekeeping, and routes each
function name (and its trigger paths) to one pool. Runs on the gateway's event loop.

Pools can be added and replaced while the node serves: :meth:`launch` starts a pool without
routing to it, :meth:`route` switches a function to it in one step (a dict assignment, so a
call sees either the old pool or the new one), and the old pool drains in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

from registry.specs import FunctionSpec
from runtime.defaults import TICK_S
from runtime.pool import WarmPool
from runtime.sandbox.sandboxes import Sandboxes
from runtime.states import PoolState
from runtime.workers import PoolObserver

log = logging.getLogger("edgefaas.runtime")

Trigger = tuple[str, tuple[str, ...], bool]  # function name, methods, async


class Supervisor:
    """All pools of one node. Use as ``async with Supervisor(specs) as supervisor:``."""

    def __init__(
        self,
        specs: Iterable[FunctionSpec] = (),
        observer: PoolObserver | None = None,
        pool_factor: int = 1,
        sandboxes: Sandboxes | None = None,
    ) -> None:
        """``pool_factor`` multiplies every pool's ``max`` and ``queue_max`` (a cloud node
        runs larger pools than the manifest's edge sizes); ``sandboxes``: the node's (None:
        functions run as the node does)."""
        self._specs = list(specs)
        self._observer = observer
        self.sandboxes = sandboxes
        self.pool_factor = pool_factor
        self.pools: dict[str, WarmPool] = {}  # the routed pool of each function
        self.triggers: dict[str, Trigger] = {}  # trigger path → function (updated in place)
        self._all: set[WarmPool] = set()  # routed, warming and draining pools
        self._ticker: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the pools given at construction; return once all have loaded or failed (a
        failed pool is in BACKOFF, not an exception)."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        pools = await asyncio.gather(*(self.launch(spec) for spec in self._specs))
        for pool in pools:
            self.route(pool)

    async def launch(self, spec: FunctionSpec, digest: str = "") -> WarmPool:
        """Start a pool for ``spec`` (from the bundle ``digest``) without routing calls to it."""
        if self.pool_factor != 1:
            sizes = spec.pool
            spec = dataclasses.replace(
                spec,
                pool=dataclasses.replace(
                    sizes,
                    max=sizes.max * self.pool_factor,
                    queue_max=sizes.queue_max * self.pool_factor,
                ),
            )
        pool = WarmPool(spec, self._observer, digest, self.sandboxes)
        self._all.add(pool)
        await pool.start()
        return pool

    def route(self, pool: WarmPool) -> WarmPool | None:
        """Send the function's calls to ``pool`` from now on; return the pool it replaces
        (still running: drain it with :meth:`retire`)."""
        old = self.pools.get(pool.name)
        self.pools[pool.name] = pool
        self._update_triggers()
        return old if old is not pool else None

    def unroute(self, name: str) -> WarmPool | None:
        """Stop routing calls to function ``name``; return its pool (to retire)."""
        old = self.pools.pop(name, None)
        self._update_triggers()
        return old

    def retire(self, pool: WarmPool) -> None:
        """Drain ``pool`` in the background: its queued and running calls finish first."""
        task = asyncio.get_running_loop().create_task(self._stop(pool))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def discard(self, pool: WarmPool) -> None:
        """Stop a pool that was never routed (e.g. a new version that failed to start)."""
        await self._stop(pool)

    async def close(self, force: bool = False) -> None:
        """Stop all pools. Idempotent; a forced close after a graceful one kills what is left."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._closed and not force:
            return
        self._closed = True
        await asyncio.gather(*(pool.stop(force) for pool in list(self._all)))
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)

    def ready(self) -> bool:
        """True when every routed pool is RUNNING with at least ``min`` workers serving."""
        return all(
            pool.state is PoolState.RUNNING and pool.serving_count() >= pool.min
            for pool in self.pools.values()
        )

    def snapshot(self) -> list[dict[str, Any]]:
        return [pool.snapshot() for pool in self.pools.values()]

    async def _stop(self, pool: WarmPool) -> None:
        try:
            await pool.stop(drain=True)
        finally:
            self._all.discard(pool)

    def _update_triggers(self) -> None:
        table = {
            trigger.path: (pool.name, trigger.methods, trigger.is_async)
            for pool in self.pools.values()
            for trigger in pool.spec.triggers
        }
        self.triggers.clear()
        self.triggers.update(table)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for pool in list(self._all):
                try:
                    pool.tick(now)
                except Exception:
                    log.exception("function %s: housekeeping failed", pool.name)
