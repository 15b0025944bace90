"""One function's consumer on one node: takes queued calls of the function from the lanes
this node drains (:mod:`gateway.jobs.lanes`) while the node's workers for it have spare
slots, and shows itself to RQ's tools as an RQ worker.

Arbitration with sync calls: a consumer claims only as many jobs as
:meth:`~runtime.pool.WarmPool.spare_slots` says — none while a sync call waits in the
pool's queue, else the free slots of serving workers. So asynchronous calls fill idle
capacity and never queue ahead of a sync call. When jobs keep coming and no slot is spare,
it asks the pool for one more worker (within ``pool.max``); a pool scaled to zero forks
one for the calls it accepts, and for calls still waiting after ``GROW_GRACE_S`` (a
backlog); idle workers retire as usual.
A node whose workers are busy claims nothing, so its peers drain the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gateway.jobs import layout

if TYPE_CHECKING:
    from gateway.jobs.store import JobStore, Run
    from runtime.pool import WarmPool

log = logging.getLogger("edgefaas.jobs")

MOST_CLAIMED = 32  # jobs taken in one round trip
WAIT_S = 1.0  # one blocking wait for the queue (the loop then looks at its flags again)
POLL_S = 0.25  # the wait when it drains other lanes too (it can wait on one list only)
SLOT_WAIT_S = 1.0
RETRY_S = 1.0  # after a Redis error
GROW_GRACE_S = 1.0  # a call waiting this long makes a pool at zero fork (see _wake_from_zero)
WORKER_TTL_S = 10  # an RQ worker record outlives its last heartbeat by this much
RQ_VERSION = version("rq")


class Host(Protocol):
    """What a consumer uses of the node's asynchronous calls
    (:class:`~gateway.jobs.service.AsyncCalls`)."""

    node_name: str
    pools: dict[str, WarmPool]
    stopping: bool  # no more claims

    @property
    def store(self) -> JobStore: ...

    def execute(self, pool: WarmPool, run: Run, consumer: Consumer) -> None: ...


class Consumer:
    """Claims jobs of ``function`` for this node; see the module's docstring."""

    def __init__(self, calls: Host, function: str, boot: str, lanes: list[str]) -> None:
        self.calls = calls
        self.function = function
        self.lanes = lanes  # the first is the one waited on, and claimed from first
        self.turn = 0  # which of the other lanes comes next: each is first in its turn
        self.worker = f"{calls.node_name}.{function}.{boot}"
        self.key = layout.WORKER_PREFIX + self.worker
        self.birth = layout.rq_time()
        self.done = 0
        self.failed = 0
        self.busy_s = 0.0
        self.task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        """Its loop returned (the function was gone for a moment): start a new one."""
        return self.task is not None and self.task.done()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    @property
    def queues(self) -> list[str]:
        return [self.calls.store.queue(lane) for lane in self.lanes]

    async def _run(self) -> None:
        calls = self.calls
        backlog = False
        while not calls.stopping:
            pool = calls.pools.get(self.function)
            if pool is None:
                return
            spare = pool.spare_slots()
            try:
                if spare <= 0:
                    if pool.scaled_to_zero():  # no slot will come free
                        await self._wake_from_zero(pool)
                        continue
                    if backlog:
                        pool.grow()
                    pool.slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pool.slot_freed.wait(), SLOT_WAIT_S)
                    continue
                count = min(spare, MOST_CLAIMED)
                runs = await self._claim(count)
                backlog = len(runs) == count
                if not runs:
                    await calls.store.wait(self.lanes[0], self._wait_s())
                    continue
                for run in runs:
                    calls.execute(pool, run, self)
            except (RedisError, OSError) as exc:
                if not calls.stopping:
                    log.warning("async calls of %s: Redis: %s; retrying", self.function, exc)
                    await asyncio.sleep(RETRY_S)
            except Exception:
                log.exception("async calls of %s: the consumer failed; going on", self.function)
                await asyncio.sleep(RETRY_S)

    async def _wake_from_zero(self, pool: WarmPool) -> None:
        """The pool has no worker: wait for a call, then fork one if calls still wait after
        ``GROW_GRACE_S`` — the node that accepted a call forks for it at once (see
        :mod:`gateway.jobs.accept`), so a peer at zero forks only for a backlog."""
        store = self.calls.store
        if not await store.waiting(self.lanes):
            await store.wait(self.lanes[0], self._wait_s())
            return
        pool.slot_freed.clear()  # (set as soon as a worker this node forked is ready)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.slot_freed.wait(), GROW_GRACE_S)
        if pool.scaled_to_zero() and await store.waiting(self.lanes) and not pool.grow():
            await asyncio.sleep(RETRY_S)  # (its zygote is gone: the pool is restarting)

    def _wait_s(self) -> float:
        return POLL_S if len(self.lanes) > 1 else WAIT_S

    async def _claim(self, count: int) -> list[Run]:
        """Up to ``count`` runs: from the first lane, then from the others (the next only
        when those before it had too few), starting with a different one each time so that
        none is left behind a lane that always has calls. Runs claimed before a Redis error
        are kept (they hold their jobs)."""
        first, *others = self.lanes
        self.turn += 1
        if others:
            at = self.turn % len(others)
            others = others[at:] + others[:at]
        runs: list[Run] = []
        for lane in (first, *others):
            try:
                runs += await self.calls.store.claim(
                    lane, count - len(runs), self.worker, self.calls.node_name
                )
            except (RedisError, OSError):
                if not runs:
                    raise
                break
            if len(runs) == count:
                break
        return runs

    # ------------------------------------------------------------ RQ's view of it

    def record(self, busy: bool) -> dict[Any, Any]:
        """The fields of an RQ worker record (what ``rq info`` reads)."""
        return {
            "name": self.worker,
            "queues": ",".join(self.queues),
            "state": "busy" if busy else "idle",
            "birth": self.birth,
            "last_heartbeat": layout.rq_time(),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "version": RQ_VERSION,
            "python_version": sys.version,
            "successful_job_count": self.done,
            "failed_job_count": self.failed,
            "total_working_time": round(self.busy_s, 6),
        }

    def counted(self, ok: bool, seconds: float) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.busy_s += seconds


def heartbeat(pipe: Pipeline, consumer: Consumer, busy: bool) -> None:
    """Queue the commands that keep ``consumer``'s RQ worker record alive on ``pipe``."""
    pipe.hset(consumer.key, mapping=consumer.record(busy))
    pipe.expire(consumer.key, WORKER_TTL_S)
    pipe.sadd(layout.WORKERS, consumer.key)
    for queue in consumer.queues:
        pipe.sadd(layout.workers_of(queue), consumer.key)


def farewell(pipe: Pipeline, consumer: Consumer, lanes: list[str] | None = None) -> None:
    """Queue the commands that remove ``consumer``'s RQ worker record (or, given
    ``lanes``, only its entries in those lanes' lists of workers)."""
    for lane in consumer.lanes if lanes is None else lanes:
        pipe.srem(layout.workers_of(consumer.calls.store.queue(lane)), consumer.key)
    if lanes is None:
        pipe.srem(layout.WORKERS, consumer.key)
        pipe.delete(consumer.key)
