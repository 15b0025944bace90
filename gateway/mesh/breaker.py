"""A circuit breaker for the cloud: after one failed connection, no call is sent there until a
health probe succeeds, so a dead or unreachable cloud costs one short timeout — not one per
call. No caller's call is spent on probing: a background task asks ``/healthz``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("edgefaas.gateway")

PROBE_S = 1.0  # how often an open breaker probes the cloud


class CircuitBreaker:
    """Closed (calls go through) or open (calls are refused at once, probes run)."""

    def __init__(
        self, name: str, probe: Callable[[], Awaitable[bool]], probe_s: float = PROBE_S
    ) -> None:
        self.name = name
        self.probe = probe
        self.probe_s = probe_s
        self.opened_at: float | None = None
        self.reason = ""
        self._probing: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.opened_at is None

    def trip(self, reason: str) -> None:
        """A call could not reach the target: open, and probe until it answers."""
        self.reason = reason
        if self.opened_at is not None:
            return
        self.opened_at = time.monotonic()
        log.warning("%s is unreachable (%s): no calls go there until it answers", self.name, reason)
        self._probing = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
            self._probing = None

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            try:
                up = await self.probe()
            except Exception as exc:  # a probe that fails is a "no", whatever the error
                log.debug("probing %s failed: %s", self.name, exc)
                up = False
            if up:
                down_s = time.monotonic() - (self.opened_at or time.monotonic())
                log.info("%s answers again after %.1f s: calls go there again", self.name, down_s)
                self.opened_at = None
                self.reason = ""
                self._probing = None
                return
