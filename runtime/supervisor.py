"""The node's supervisor: owns every warm pool, ticks their housekeeping, starts and stops
them together. Runs on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from registry.specs import FunctionSpec
from runtime.defaults import TICK_S
from runtime.pool import PoolObserver, WarmPool
from runtime.states import PoolState

log = logging.getLogger("edgefaas.runtime")


class Supervisor:
    """All pools of one node. Use as ``async with Supervisor(specs) as supervisor:``."""

    def __init__(self, specs: Iterable[FunctionSpec], observer: PoolObserver | None = None) -> None:
        self._specs = list(specs)
        self._observer = observer
        self.pools: dict[str, WarmPool] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every pool's zygote and first workers; return once all have loaded or
        failed (a failed pool is in BACKOFF, not an exception)."""
        for spec in self._specs:
            self.pools[spec.name] = WarmPool(spec, self._observer)
        await asyncio.gather(*(pool.start() for pool in self.pools.values()))
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

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
        await asyncio.gather(*(pool.stop(force) for pool in self.pools.values()))

    def ready(self) -> bool:
        """True when every pool is RUNNING with at least ``min`` workers serving."""
        return all(
            pool.state is PoolState.RUNNING and pool.serving_count() >= pool.min
            for pool in self.pools.values()
        )

    def snapshot(self) -> list[dict[str, Any]]:
        return [pool.snapshot() for pool in self.pools.values()]

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for pool in self.pools.values():
                try:
                    pool.tick(now)
                except Exception:
                    log.exception("function %s: housekeeping failed", pool.name)
