"""Real warm pools without processes, for tests of admission and routing.

The pool is a :class:`runtime.pool.WarmPool` in RUNNING state whose workers are socket-less
:class:`WorkerLink` objects: calls submitted to it are dispatched and queued by the real
dispatcher but never answered, so a test sets exactly how busy the pool is (free workers,
running calls, queued calls, recent service time) and asks the real admission rule.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from registry.specs import FunctionSpec, HandlerRef, PoolSpec, SpillSpec
from runtime.pool import WarmPool
from runtime.states import PoolState, WorkerPhase
from runtime.worker_link import Call, WorkerLink
from tests.conftest import REPO


def spec(
    name: str = "echo", *, spill: SpillSpec | None = None, timeout_s: float = 5.0, **pool: Any
) -> FunctionSpec:
    """A spec for ``tests.fixtures.handlers:echo`` (never started here)."""
    bounds = {
        "min": 1,
        "max": 1,
        "concurrency": 1,
        "queue_max": 64,
        "max_queue_wait_ms": 10_000,
        "idle_timeout_s": 30.0,
        **pool,
    }
    return FunctionSpec(
        name=name,
        handler=HandlerRef("module", "tests.fixtures.handlers", "echo"),
        root=REPO,
        triggers=(),
        pool=PoolSpec(**bounds),
        timeout_s=timeout_s,
        memory_mb=256,
        spill=spill or SpillSpec(),
    )


@asynccontextmanager
async def standing_pool(
    function: FunctionSpec, *, workers: int = 1, digest: str = "d" * 64, service_s: float = 1.0
) -> AsyncIterator[WarmPool]:
    """A RUNNING pool with ``workers`` free socket-less workers, each taking the spec's
    ``concurrency`` calls at once, and a recent service time of ``service_s`` (large by
    default, so the age of a running call does not move the wait estimate)."""
    pool = WarmPool(function, digest=digest)
    pool.state = PoolState.RUNNING  # as if its zygote had loaded (an async handler's)
    pool.concurrency = pool.dispatch.concurrency = function.pool.concurrency
    pool.stats.service_s = service_s
    for token in range(1, workers + 1):
        link = WorkerLink(pool.worker_set, token)
        link.set_phase(WorkerPhase.SERVING)
        pool.workers[token] = link
        pool.dispatch.release(link)
    try:
        yield pool
    finally:
        for call in [*pool.dispatch.queue, *_running(pool)]:
            call.future.cancel()
        pool.dispatch.queue.clear()


def occupy(pool: WarmPool, calls: int) -> list[Call]:
    """Submit ``calls`` calls (they take free workers first, then queue)."""
    return [pool.submit(b"POST", b"/", b"", b"", f"busy-{n}", b"") for n in range(calls)]


def _running(pool: WarmPool) -> list[Call]:
    return [call for link in pool.workers.values() for call in link.calls.values()]
