"""A node's part in asynchronous calls: a :class:`~gateway.jobs.consumer.Consumer` per
function it runs, the runs in flight, and a once-a-second round that

- renews the leases of this node's runs (a lease lapses ``LEASE_MS`` after its node stops
  renewing it — the only sign of a node killed mid-run that needs no clock agreement);
- reaps runs of the lanes it drains whose lease lapsed, on any node: their jobs go back to
  the head of their queue and run on whichever node drains it and is free
  (``MOST_LOST_RUNS`` lost runs in a row make a dead letter) — but not until
  ``REAP_AFTER_OUTAGE_S`` after this node last could not reach Redis, or saw a new Redis
  server (a restart): when Redis was down (or restarted from its file) longer than a lease,
  every run's lease lapsed, and the live nodes first take theirs again
  (:data:`scripts.RENEW`), so no run still going is started a second time;
- moves retries that are due to their queues;
- keeps the consumers' RQ worker records alive.

Where a call runs follows the function's ``spill.to``: see :mod:`gateway.jobs.lanes`.

How a run ends: an answer with status < 500 finishes the call; ≥ 500 (a handler's error,
a crash, a timeout) is a failed run, retried after the function's ``async.backoff_s`` while
``async.retries`` and ``async.max_age_s`` allow, else a dead letter. A run that never
reached a worker (the pool was stopping, or a sync burst kept it waiting past
``max_queue_wait_ms``) goes back to its queue uncounted. On the call's final outcome the
caller's callback URL, if any, gets the function's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import error_response
from gateway.jobs.callbacks import CallbackPolicy, CallbackSender, Delivery
from gateway.jobs.consumer import Consumer, farewell, heartbeat
from gateway.jobs.lanes import accept_lane, drained_lanes
from gateway.jobs.store import LEASE_MS, JobStore, Outcome, Run
from runtime.errors import Overloaded, RuntimeFailure, Unavailable
from runtime.event import parse_header_block

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.records.buffer import CallRecords
    from runtime.pool import WarmPool
    from runtime.worker_link import Call

log = logging.getLogger("edgefaas.jobs")

ROUND_S = 1.0
BLOCKING_TIMEOUT_S = 5.0  # socket timeout of the blocking client (> a wait)
ERROR_PREVIEW = 300  # bytes of a failed answer's body kept as its error
MOST_PENDING_CALLBACKS = 1000  # deliveries in flight per node (each holds a result body)
PERSIST_S = 120.0  # how long a run's outcome is retried while Redis is unreachable
PERSIST_RETRY_S = 1.0  # the longest wait between those tries (lands soon after an outage)
# No reaping this long after this node could not reach Redis: a lease, and two renewals.
REAP_AFTER_OUTAGE_S = LEASE_MS / 1000 + 2 * ROUND_S


class AsyncCalls:
    """Use as: ``await start(redis_url)`` once the mesh is connected; ``await close()``
    before the mesh's Redis closes (it waits for runs in flight, at most ``grace_s``)."""

    def __init__(
        self,
        node_name: str,
        pools: dict[str, WarmPool],
        records: CallRecords,
        metrics: Metrics,
        *,
        callback_allow: str,
        grace_s: float,
        cloud: bool,
    ) -> None:
        self.node_name = node_name
        self.pools = pools  # the supervisor's, updated in place as versions switch
        self.records = records
        self.metrics = metrics
        self.policy = CallbackPolicy(callback_allow)
        self.sender: CallbackSender | None = None
        self.grace_s = grace_s
        self.cloud = cloud
        self.boot = os.urandom(3).hex()
        self.stopping = False  # no more claims
        self.closing = False  # no more rounds or lease renewals
        self._store: JobStore | None = None
        self._blocking: Redis | None = None
        self.consumers: dict[str, Consumer] = {}
        self.running: dict[str, Run] = {}  # job id → this node's run of it
        self.settling: set[str] = set()  # tokens of the runs whose outcome is being written
        self._tasks: set[asyncio.Task[None]] = set()
        self._round: asyncio.Task[None] | None = None
        self._reachable_since: float | None = None  # Redis answered since (monotonic)
        self._redis_run: str | None = None  # the run_id of the Redis server that answered
        self._renewer: asyncio.Task[None] | None = None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("asynchronous calls are not started")
        return self._store

    async def start(self, redis: Redis, redis_url: str, prefix: str) -> None:
        self._blocking = Redis.from_url(
            redis_url, socket_timeout=BLOCKING_TIMEOUT_S, socket_connect_timeout=2.0
        )
        self._store = JobStore(redis, self._blocking, prefix)
        self.sender = CallbackSender(self.policy)
        loop = asyncio.get_running_loop()
        self._round = loop.create_task(self._rounds())
        self._renewer = loop.create_task(self._renew_leases())

    async def close(self, force: bool = False) -> None:
        """Stop claiming; let the runs in flight settle (unless ``force``: at most
        ``grace_s``), their leases renewed meanwhile; then leave RQ."""
        if self.stopping:
            return
        self.stopping = True
        for consumer in self.consumers.values():
            await consumer.stop()
        if self._tasks and not force:
            _, left = await asyncio.wait(set(self._tasks), timeout=self.grace_s)
            if left:
                log.warning(
                    "%d async call(s) still running at close: they run again elsewhere",
                    len(left),
                )
        self.closing = True
        for task in (self._round, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._store is not None:
            with contextlib.suppress(RedisError, OSError):
                async with self._store.redis.pipeline(transaction=False) as pipe:
                    for consumer in self.consumers.values():
                        farewell(pipe, consumer)
                    await pipe.execute()
        if self.sender is not None:
            await self.sender.close()
            self.sender = None
        if self._blocking is not None:
            await self._blocking.aclose()

    # ------------------------------------------------------------------ runs

    def execute(self, pool: WarmPool, run: Run, consumer: Consumer) -> None:
        """Give ``run`` to ``pool`` now (so the slot it was claimed for is taken before
        the consumer counts spare slots again) and settle it in the background."""
        self.running[run.job_id] = run
        call: Call | None = None
        policy = pool.spec.async_policy
        started = time.perf_counter()  # (not in the task: it may first run after the answer)
        if time.time() - run.age_from <= policy.max_age_s:
            call = pool.submit(run.method, run.path, run.query, run.headers, run.job_id, run.body)
        task = asyncio.get_running_loop().create_task(
            self._execute(pool, run, consumer, call, started)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(
        self, pool: WarmPool, run: Run, consumer: Consumer, call: Call | None, started: float
    ) -> None:
        try:
            if call is None:
                max_age_s = pool.spec.async_policy.max_age_s
                error = f"older than its max_age_s ({max_age_s:g} s): not run again"
                await self._settle(pool, run, Outcome(0, b"", b"", 0.0, error), consumer)
                return
            try:
                result = await call.future
            except (Overloaded, Unavailable):  # it never reached a worker
                await _persist(lambda: self.store.requeue(run), run, self)
                return
            except RuntimeFailure as exc:
                status, headers, body = error_response(exc)
                outcome = Outcome(status, _block(headers), body, time.perf_counter() - started)
            else:
                outcome = Outcome(
                    result.status, result.headers, result.body, time.perf_counter() - started
                )
            if outcome.status >= 500:
                error = f"answered {outcome.status}: {_error_message(outcome.body)}"
                outcome = Outcome(
                    outcome.status, outcome.headers, outcome.body, outcome.duration_s, error
                )
            await self._settle(pool, run, outcome, consumer)
        except (RedisError, OSError) as exc:  # given up: the lease lapses, the job runs again
            log.error("async call %s of %s: Redis: %s", run.job_id, run.function, exc)
        except Exception:
            log.exception("async call %s of %s failed inside the gateway", run.job_id, run.function)
        finally:
            if self.running.get(run.job_id) is run:  # (not a later run of the same job here)
                del self.running[run.job_id]

    async def _settle(self, pool: WarmPool, run: Run, outcome: Outcome, consumer: Consumer) -> None:
        self.settling.add(run.token)
        try:
            await self._settle_run(pool, run, outcome, consumer)
        finally:
            self.settling.discard(run.token)

    async def _settle_run(
        self, pool: WarmPool, run: Run, outcome: Outcome, consumer: Consumer
    ) -> None:
        policy = pool.spec.async_policy
        failed = bool(outcome.error)
        final = True
        if not failed:
            kept = await _persist(lambda: self.store.finish(run, outcome), run, self)
            result = "finished"
        else:
            # the retry this would be (1 for the first): counted from the retries left, so
            # runs lost with their node and earlier runs before a redrive do not count
            retry = max(1, policy.retries - run.retries_left + 1)
            wait_s = policy.backoff_before(retry) if run.retries_left > 0 else 0.0
            at = time.time() + wait_s
            if run.retries_left > 0 and at - run.age_from <= policy.max_age_s:
                kept = await _persist(lambda: self.store.retry(run, outcome, at), run, self)
                result, final = "retry", False
            else:
                kept = await _persist(lambda: self.store.bury(run, outcome), run, self)
                result = "dead"
        consumer.counted(not failed, outcome.duration_s)
        self.metrics.observe_async_run(run.function, result, outcome.duration_s)
        call_id = run.job_id if run.attempt == 1 else f"{run.job_id}.{run.attempt}"
        self.records.add(
            call_id,
            run.function,
            pool.digest,
            "async",
            result,
            outcome.status,
            outcome.duration_s,
            len(run.body),
            len(outcome.body),
        )
        if not kept:
            log.warning(
                "async call %s of %s: run %d ended (%s) after the job was taken from it",
                run.job_id,
                run.function,
                run.attempt,
                result,
            )
        elif final and run.callback_url:
            self.callback(run.callback_url, run.job_id, run.function, outcome)

    def callback(self, url: str, job_id: str, function: str, outcome: Outcome) -> None:
        """Deliver the call's final outcome to ``url``; the outbox entry (written with the
        outcome) goes once it is delivered or given up. If this node dies first, another
        node sends it after ``CALLBACK_LEASE_S``."""
        if self.sender is None:  # closed: the outbox keeps it for another node
            return
        if self.sender.pending >= MOST_PENDING_CALLBACKS:  # a receiver is slow or gone
            log.warning(
                "async call %s: %d callbacks in flight; this one waits in the outbox",
                job_id,
                self.sender.pending,
            )
            return
        content_type = ""
        for name, value in parse_header_block(outcome.headers):
            if name.lower() == "content-type":
                content_type = value
        status = outcome.status or 500
        delivery = self.sender.submit(
            url, job_id, function, status, outcome.duration_s, outcome.body, content_type
        )
        delivery.add_done_callback(lambda task: self._delivered(task, job_id))

    def _delivered(self, delivery: asyncio.Task[Delivery], job_id: str) -> None:
        if delivery.cancelled() or self.closing:
            return  # the node is closing: the outbox keeps it
        task = asyncio.get_running_loop().create_task(self._forget_callback(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget_callback(self, job_id: str) -> None:
        try:
            await self.store.callback_done(job_id)
        except (RedisError, OSError) as exc:  # sent again later: at least once
            log.warning("async call %s: callback sent, outbox not cleared: %s", job_id, exc)

    async def _send_due_callbacks(self) -> None:
        """Callbacks another node (or this one, before a restart) did not confirm."""
        room = MOST_PENDING_CALLBACKS - (self.sender.pending if self.sender else 0)
        if room <= 0:
            return
        for job_id in await self.store.due_callbacks(min(room, 50)):
            job = await self.store.get(job_id)
            url = job.get("ef_cb", b"").decode() if job else ""
            if job is None or not url:
                await self.store.callback_done(job_id)
                continue
            error = job.get("ef_error", b"").decode("utf-8", "replace")
            status = int(job.get("ef_code", b"0") or 0)  # 0: no answer (callback says 500)
            body = job.get("ef_rb", b"") or error.encode()
            duration = float(job.get("ef_dur", b"0") or 0)
            outcome = Outcome(status, job.get("ef_rh", b""), body, duration, error)
            function = job.get("ef_fn", b"").decode()
            log.info("async call %s: sending its callback again", job_id)
            self.callback(url, job_id, function, outcome)

    # ------------------------------------------------------------------ rounds

    async def _rounds(self) -> None:
        while not self.closing:
            try:
                await self._round_once()
            except (RedisError, OSError) as exc:
                self._reachable_since = None
                log.debug("async calls round: Redis: %s", exc)
            except Exception:
                log.exception("async calls round failed")
            await asyncio.sleep(ROUND_S)

    async def _renew_leases(self) -> None:
        """Every second, on its own: a slow round of reaps must not let leases lapse."""
        while not self.closing:
            try:
                for run in await self.store.renew(list(self.running.values())):
                    if run.token not in self.settling:  # settling drops its lease
                        log.warning("async call %s: this node's lease on it lapsed", run.job_id)
            except (RedisError, OSError) as exc:
                self._reachable_since = None
                log.warning("async calls: renewing leases: Redis: %s", exc)
            await asyncio.sleep(ROUND_S)

    def accept_lane(self, pool: WarmPool) -> str:
        """The lane of a call of ``pool``'s function accepted here."""
        return accept_lane(pool.spec.name, pool.spec.spill.to, self.node_name, self.cloud)

    def lanes_for(self, pool: WarmPool, known: set[str]) -> list[str]:
        """The lanes this node drains for ``pool``'s function (``known``: those that exist)."""
        spec = pool.spec
        return drained_lanes(spec.name, spec.spill.to, self.node_name, self.cloud, known)

    async def _round_once(self) -> None:
        store = self.store
        known = set(await store.lanes())
        now = time.monotonic()
        server = await store.redis.info("server")
        if self._reachable_since is None or server.get("run_id") != self._redis_run:
            self._reachable_since = now  # (a Redis restarted quickly is an outage too:
            self._redis_run = server.get("run_id")  # its client reconnected unnoticed)
        reaping = (
            now - self._reachable_since >= REAP_AFTER_OUTAGE_S
            and int(server.get("uptime_in_seconds", 0)) >= REAP_AFTER_OUTAGE_S
        )
        async with store.redis.pipeline(transaction=False) as pipe:
            for name, pool in [] if self.stopping else list(self.pools.items()):
                ended = self.consumers.get(name)
                if ended is None or ended.ended:
                    consumer = Consumer(self, name, self.boot, self.lanes_for(pool, known))
                    if ended is not None:  # (the same worker record)
                        farewell(pipe, ended, [x for x in ended.lanes if x not in consumer.lanes])
                    self.consumers[name] = consumer
                    consumer.start()
            for name, consumer in list(self.consumers.items()):
                running = self.pools.get(name)
                if running is None:
                    del self.consumers[name]
                    await consumer.stop()
                    farewell(pipe, consumer)
                    continue
                lanes = self.lanes_for(running, known)
                farewell(pipe, consumer, [x for x in consumer.lanes if x not in lanes])
                consumer.lanes = lanes
            busy = {run.function for run in self.running.values()}
            for consumer in self.consumers.values():
                heartbeat(pipe, consumer, consumer.function in busy)
            await pipe.execute()
        lanes = [lane for consumer in self.consumers.values() for lane in consumer.lanes]
        await store.trim(lanes)
        for lane in lanes:
            await store.promote(lane)
            for job_id, state in await store.reap(lane) if reaping else []:
                log.warning("async call %s (%s): its node was lost; %s", job_id, lane, state)
        await self._send_due_callbacks()


async def _persist(step: Callable[[], Awaitable[bool]], run: Run, calls: AsyncCalls) -> bool:
    """Write a run's outcome, retrying while Redis is unreachable (the run stays in
    ``running`` meanwhile, so its lease is renewed as soon as Redis answers again): an
    outcome lost here would make the job run again. Gives up after ``PERSIST_S``."""
    deadline = time.monotonic() + PERSIST_S
    wait_s = 0.2
    while True:
        try:
            return await step()
        except (RedisError, OSError) as exc:
            if time.monotonic() + wait_s > deadline or calls.closing:
                raise
            log.warning("async call %s: writing its outcome: Redis: %s; retrying", run.job_id, exc)
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, PERSIST_RETRY_S)


def _error_message(body: bytes) -> str:
    """A failed run's error, for dead letters: the message of an edgefaas error body
    (``{"error": {"message": ...}}``), else the start of the body."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, TypeError, KeyError):
        message = None
    if isinstance(message, str):
        return message[:ERROR_PREVIEW]
    return body[:ERROR_PREVIEW].decode("utf-8", "replace")


def _block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"\n".join(name + b":" + value for name, value in headers)
