"""The job store: each step of an asynchronous call's life as one Redis round trip (a Lua
script from :mod:`gateway.jobs.scripts`), over the mesh's Redis.

States, as RQ names them in the job's ``status`` field, and as ``GET /system/calls`` shows
them: ``queued``; ``started`` (a node runs it, holding its lease); ``finished``;
``scheduled`` (a run failed and a retry waits: shown as *failed*); ``failed`` (retries or
age exhausted — a dead letter in RQ's failed registry: shown as *dead*); ``canceled``.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gateway.jobs import layout, scripts
from gateway.jobs.intake import Intake, NewCall
from gateway.jobs.layout import DEAD_TTL_S, RESULT_TTL_S

LEASE_MS = 4000  # a run's lease: renewed every second, lapses 4 s after its node stops
MOST_LOST_RUNS = 5  # a job whose node was lost that many runs in a row becomes dead
CALLBACK_LEASE_S = 90.0  # a callback not confirmed this long after it was due is sent again


@dataclass(frozen=True)
class Run:
    """One claimed run of a job: the call, its token and how many runs it has had."""

    job_id: str
    token: str
    attempt: int
    function: str
    method: bytes
    path: bytes
    query: bytes
    headers: bytes
    body: bytes
    callback_url: str
    idempotency_key: str
    age_from: float
    retries_left: int
    lane: str  # the lane it was claimed from: its outcome goes to that queue's registries


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the function's answer (or the runtime's error as one)."""

    status: int
    headers: bytes
    body: bytes
    duration_s: float
    error: str = ""  # set when the run failed


class JobStore:
    """Asynchronous calls of one mesh (key ``prefix``) in the Redis ``redis``; blocking
    waits use ``blocking``, a client of their own (a blocked connection serves nothing
    else)."""

    def __init__(self, redis: Redis, blocking: Redis, prefix: str) -> None:
        self.redis = redis
        self.blocking = blocking
        self.prefix = prefix
        self.leases = layout.lease_prefix(prefix)
        self.intake = Intake(redis, prefix)
        self._claim = redis.register_script(scripts.CLAIM)
        self._settle = redis.register_script(scripts.SETTLE)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._renew = redis.register_script(scripts.RENEW)
        self._reap = redis.register_script(scripts.REAP)
        self._promote = redis.register_script(scripts.PROMOTE)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._redrive = redis.register_script(scripts.REDRIVE)
        self._claim_callbacks = redis.register_script(scripts.CLAIM_CALLBACKS)
        self.outbox = f"{prefix}:callbacks"

    def queue(self, lane: str) -> str:
        return layout.queue_name(self.prefix, lane)

    def queue_key(self, lane: str) -> str:
        return layout.queue_key(self.queue(lane))

    def registry(self, kind: str, lane: str) -> str:
        return layout.registry_key(kind, self.queue(lane))

    # ------------------------------------------------------------------ steps

    async def accept(self, call: NewCall) -> str | None:
        """See :meth:`Intake.accept`."""
        return await self.intake.accept(call)

    async def claim(self, lane: str, count: int, worker: str, node: str) -> list[Run]:
        """Take up to ``count`` queued jobs of ``lane`` for this node to run now."""
        now = time.time()
        queue = self.queue(lane)
        args: list[Any] = [
            count,
            layout.JOB_PREFIX,
            self.leases,
            LEASE_MS,
            worker,
            node,
            layout.rq_time(now),
            repr(now),
            int(now + layout.WIP_SCORE_AHEAD_S),
            os.urandom(6).hex() + "-",
        ]
        keys = [layout.queue_key(queue), layout.registry_key("wip", queue)]
        rows = await self._claim(keys=keys, args=args)
        return [_run(row, lane) for row in rows]

    async def finish(self, run: Run, outcome: Outcome) -> bool:
        """The run answered: its result is kept ``RESULT_TTL_S``. False if the job was no
        longer this run's (see :data:`scripts.SETTLE`)."""
        now = time.time()
        return await self._settle_as(
            run, "finished", now + RESULT_TTL_S, RESULT_TTL_S, "finished", now, outcome, True
        )

    async def retry(self, run: Run, outcome: Outcome, at: float) -> bool:
        """The run failed; run it again at ``at`` (epoch seconds)."""
        return await self._settle_as(
            run,
            "scheduled",
            at,
            0,
            "scheduled",
            time.time(),
            outcome,
            False,
            "retries_left", max(0, run.retries_left - 1),
            "ef_retry_at", repr(at),
        )  # fmt: skip

    async def bury(self, run: Run, outcome: Outcome) -> bool:
        """The run failed and the job is not run again: a dead letter."""
        now = time.time()
        return await self._settle_as(
            run,
            "failed",
            now + DEAD_TTL_S,
            DEAD_TTL_S,
            "failed",
            now,
            outcome,
            True,
            "exc_info", zlib.compress(outcome.error.encode()),
        )  # fmt: skip

    async def requeue(self, run: Run) -> bool:
        """The run never reached a worker: back to the head of the queue, uncounted."""
        queue = self.queue(run.lane)
        keys = [
            layout.job_key(run.job_id),
            layout.registry_key("wip", queue),
            layout.queue_key(queue),
            self.leases + run.job_id,
        ]
        return bool(await self._requeue(keys=keys, args=[run.job_id, run.token]))

    async def renew(self, runs: list[Run]) -> list[Run]:
        """Extend the leases of ``runs``; return those whose lease is no longer theirs."""
        if not runs:
            return []
        keys = [self.leases + run.job_id for run in runs]
        args: list[Any] = [LEASE_MS, layout.JOB_PREFIX]
        for run in runs:
            args += [run.job_id, run.token]
        lost = await self._renew(keys=keys, args=args)
        return [runs[int(i) - 1] for i in lost]

    async def reap(self, lane: str) -> list[tuple[str, str]]:
        """Runs of ``lane`` whose lease lapsed: requeued, or dead after
        ``MOST_LOST_RUNS``; returns (job id, 'queued' | 'dead') pairs."""
        now = time.time()
        queue = self.queue(lane)
        keys = [
            layout.registry_key("wip", queue),
            layout.queue_key(queue),
            layout.registry_key("failed", queue),
            self.outbox,
        ]
        args: list[Any] = [
            layout.JOB_PREFIX,
            self.leases,
            MOST_LOST_RUNS,
            layout.rq_time(now),
            now + DEAD_TTL_S,
            DEAD_TTL_S,
            repr(now),
        ]
        flat = [_text(item) for item in await self._reap(keys=keys, args=args)]
        return list(zip(flat[::2], flat[1::2], strict=True))

    async def due_callbacks(self, most: int = 50) -> list[str]:
        """Callbacks whose delivery was not confirmed in time (its node died or closed),
        leased to this node for another ``CALLBACK_LEASE_S``."""
        now = time.time()
        args: list[Any] = [repr(now), repr(now + CALLBACK_LEASE_S), most]
        ids = await self._claim_callbacks(keys=[self.outbox], args=args)
        return [_text(i) for i in ids]

    async def callback_done(self, job_id: str) -> None:
        """The callback was delivered, or given up after its retries."""
        await self.redis.zrem(self.outbox, job_id)

    async def promote(self, lane: str) -> int:
        """Move the retries of ``lane`` that are due to its queue."""
        now = time.time()
        queue = self.queue(lane)
        keys = [layout.registry_key("scheduled", queue), layout.queue_key(queue)]
        args: list[Any] = [layout.JOB_PREFIX, repr(now), layout.rq_time(now)]
        return int(await self._promote(keys=keys, args=args))

    async def cancel(self, job_id: str) -> str:
        """'canceled', 'missing', or the status of a job that can no longer be canceled."""
        now = time.time()
        args: list[Any] = [
            job_id,
            layout.rq_time(now),
            repr(now),
            now + DEAD_TTL_S,
            DEAD_TTL_S,
            layout.RQ,
            self.prefix + ".",
        ]
        return _text(await self._cancel(keys=[layout.job_key(job_id)], args=args))

    async def redrive(self, lane: str, retries: int, job_ids: list[str]) -> int:
        """Put dead letters of ``lane`` (all, or those of ``job_ids`` it has) back in its
        queue."""
        now = time.time()
        keys = [self.registry("failed", lane), self.queue_key(lane)]
        args: list[Any] = [layout.JOB_PREFIX, retries, layout.rq_time(now), repr(now), *job_ids]
        return int(await self._redrive(keys=keys, args=args))

    # ------------------------------------------------------------------ reading

    async def get(self, job_id: str) -> dict[str, bytes] | None:
        """The job's fields; None when there is none, or it is not this mesh's."""
        raw: dict[Any, Any] = await self.redis.hgetall(layout.job_key(job_id))
        job = {_text(k): v for k, v in raw.items()}
        mesh, origin = self.queue(""), _text(job.get("origin", b""))
        if not origin.startswith(mesh) or not layout.LANE.fullmatch(origin[len(mesh) :]):
            return None  # (another mesh's: "PREFIX.lab.motion" has no lane of this one)
        return job

    async def trim(self, lanes: list[str]) -> None:
        """Drop the entries of finished, dead and canceled jobs whose time is up from the
        registries of ``lanes`` (their job hashes have expired by then)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                for kind in ("finished", "failed", "canceled"):
                    pipe.zremrangebyscore(self.registry(kind, lane), "-inf", now)
            await pipe.execute()

    async def dead_letters(self, lane: str, limit: int) -> list[dict[str, Any]]:
        """The oldest ``limit`` dead letters of ``lane``, with their fields."""
        ids: list[Any] = await self.redis.zrange(self.registry("failed", lane), 0, limit - 1)
        if not ids:
            return []
        fields = ("ef_fn", "ef_attempts", "ef_error", "ef_ended", "ef_created")
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(layout.JOB_PREFIX + _text(job_id), fields)
            rows = await pipe.execute()
        return [
            {"id": job_id, **{f: v or b"" for f, v in zip(fields, row, strict=True)}}
            for job_id, row in zip(ids, rows, strict=True)
            if row[0] is not None
        ]

    async def lanes(self) -> list[str]:
        """Every lane of this mesh that has had an async call: the queues in RQ's list of
        queues under this mesh's prefix."""
        start = layout.queue_key(self.queue(""))
        keys: set[Any] = await self.redis.smembers(layout.QUEUES)
        lanes = (k[len(start) :] for k in map(_text, keys) if k.startswith(start))
        # (the queue "edgefaas.lab.motion" of a mesh "edgefaas.lab" is no lane of "edgefaas")
        return sorted(lane for lane in lanes if layout.LANE.fullmatch(lane))

    async def dead_count(self, lane: str) -> int:
        """Dead letters of ``lane`` not yet expired (a lane no node drains is not trimmed)."""
        return int(await self.redis.zcount(self.registry("failed", lane), time.time(), "+inf"))

    async def waiting(self, lanes: list[str]) -> int:
        """How many calls wait in the queues of ``lanes``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.llen(self.queue_key(lane))
            counts: list[int] = await pipe.execute()
        return sum(counts)

    async def wait(self, lane: str, timeout_s: float) -> bool:
        """Block until the queue of ``lane`` has a job (True) or ``timeout_s`` passes.
        ``BLMOVE q q`` moves the head to where it was: it only waits."""
        key = self.queue_key(lane)
        wait_s: Any = max(0.01, timeout_s)  # Redis takes a decimal; redis-py's hint says int
        moved = await self.blocking.blmove(key, key, wait_s, "LEFT", "LEFT")
        return moved is not None

    async def _settle_as(
        self,
        run: Run,
        registry: str,
        score: float,
        ttl_s: int,
        status: str,
        now: float,
        outcome: Outcome,
        final: bool,
        *extra: Any,
    ) -> bool:
        queue = self.queue(run.lane)
        keys = [
            layout.job_key(run.job_id),
            layout.registry_key("wip", queue),
            layout.registry_key(registry, queue),
            self.leases + run.job_id,
            layout.queue_key(queue),
            self.outbox,
        ]
        fields = [
            "status", status,
            "ended_at", layout.rq_time(now),
            "ef_ended", repr(now),
            "ef_code", outcome.status,
            "ef_rh", outcome.headers,
            "ef_rb", outcome.body,
            "ef_dur", repr(outcome.duration_s),
            "ef_error", outcome.error,
            "ef_lost", 0,  # lost runs are counted in a row
            *extra,
        ]  # fmt: skip
        due = now + CALLBACK_LEASE_S if final else 0
        args: list[Any] = [run.job_id, run.token, score, ttl_s, due, *fields]
        return bool(await self._settle(keys=keys, args=args))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _run(row: list[Any], lane: str) -> Run:
    job_id, token, attempt, fn, method, path, query, headers, body, cb, idem, age, retries = row
    return Run(
        job_id=_text(job_id),
        token=_text(token),
        attempt=int(attempt),
        function=_text(fn),
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        callback_url=_text(cb),
        idempotency_key=_text(idem),
        age_from=float(age or 0),
        retries_left=int(retries or 0),
        lane=lane,
    )
